"""Every PromQL expression the deploy files hold, and the metric contract they must follow.

Sources: Grafana dashboard panels and template variables, Prometheus alert and recording
rules. The contract is the metric table in docs/contracts.md.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
RULE_FILES = [DEPLOY / "prometheus" / "alerts.yml", DEPLOY / "prometheus" / "recording.yml"]
CONTRACTS = ROOT / "docs" / "contracts.md"

Kind = Literal["panel", "variable", "alert", "record"]
# labels every scraped series carries, and the histogram bucket label
TARGET_LABELS = frozenset({"instance", "job", "le"})
# Grafana's values for template variables when a test evaluates a query ($__range: the
# dashboard time range; $__rate_interval: at least 4 scrape intervals)
GRAFANA_DEFAULTS = {"$__rate_interval": "1m", "$__range": "5m", "$__interval": "15s"}


@dataclass(frozen=True, slots=True)
class Query:
    source: str  # e.g. "gpu.json: Power by GPU [A]" or "alerts.yml: EffgateHighErrorRate"
    kind: Kind
    expr: str
    file: str

    @property
    def gpu(self) -> bool:
        """Reads GPU metrics only (empty on a host without an NVIDIA driver)."""
        names = metric_names(self.expr)
        return bool(names) and any("gpu" in n for n in names)


@dataclass(frozen=True, slots=True)
class MetricContract:
    name: str
    type: str
    labels: frozenset[str]

    def series_names(self) -> set[str]:
        if self.type == "histogram":
            return {f"{self.name}_{s}" for s in ("bucket", "sum", "count")}
        return {self.name}


def contract_metrics() -> dict[str, MetricContract]:
    """The Prometheus metric table of docs/contracts.md, keyed by series name."""
    text = CONTRACTS.read_text()
    section = text.split("## Prometheus metrics", 1)[1].split("\n## ", 1)[0]
    metrics: dict[str, MetricContract] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`effgate_"):
            continue
        names = re.findall(r"`([a-z_]+)`", cells[0])
        label_text = re.sub(r"\(.*?\)", "", cells[2].split("—")[0])
        labels = frozenset(re.findall(r"\b([a-z0-9_]+)\b", label_text))
        base = names[0]
        for name in names:
            if name.startswith("_"):  # `effgate_x_used_bytes` / `_total_bytes`
                parts = name.strip("_").split("_")
                name = "_".join(base.split("_")[: -len(parts)] + parts)
            contract = MetricContract(name, cells[1].split()[0], labels)
            for series in contract.series_names():
                metrics[series] = contract
    return metrics


def metric_names(expr: str) -> set[str]:
    """effgate_* series names an expression reads (recorded series contain ':' and are not)."""
    return {t for t in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr) if t.startswith("effgate_")}


def recorded_names(expr: str) -> set[str]:
    """Recording-rule outputs an expression reads (level:metric:operations)."""
    return {t for t in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr) if ":effgate_" in t}


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names matched in its {...}) for every effgate_* selector."""
    found = []
    for name, body in re.findall(r"(effgate_[a-z0-9_]+)\s*\{([^}]*)\}", expr):
        found.append((name, set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", body))))
    return found


def grouping_labels(expr: str) -> set[str]:
    """Labels named in by (...), without (...), on (...), ignoring (...), group_left (...)."""
    labels: set[str] = set()
    for body in re.findall(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr
    ):
        labels |= {b.strip() for b in body.split(",") if b.strip()}
    return labels


def substitute(expr: str, variables: dict[str, str] | None = None) -> str:
    """Replace Grafana's built-ins and the dashboards' own variables ($route, ${model}, ...)."""
    values = {**GRAFANA_DEFAULTS, **(variables or {})}
    for name, value in values.items():
        bare = name.lstrip("$")
        expr = expr.replace("${" + bare + "}", value).replace("$" + bare, value)
    return expr


def load_dashboard(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows; row headers themselves excluded."""
    out: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query")
    return str(query.get("query") if isinstance(query, dict) else query)


def dashboard_queries() -> list[Query]:
    queries = []
    for path in DASHBOARDS:
        doc = load_dashboard(path)
        for panel in panels(doc):
            for target in panel.get("targets", []):
                source = f"{path.name}: {panel['title']} [{target['refId']}]"
                queries.append(Query(source, "panel", target["expr"], path.name))
        for var in doc["templating"]["list"]:
            if var["type"] == "query":
                source = f"{path.name}: variable {var['name']}"
                queries.append(Query(source, "variable", variable_query(var), path.name))
    return queries


def rules() -> list[dict[str, Any]]:
    out = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out.append({**rule, "file": path.name})
    return out


def rule_queries() -> list[Query]:
    queries = []
    for rule in rules():
        kind: Kind = "alert" if "alert" in rule else "record"
        name = rule.get("alert") or rule["record"]
        queries.append(Query(f"{rule['file']}: {name}", kind, rule["expr"], rule["file"]))
    return queries


def all_queries() -> list[Query]:
    return dashboard_queries() + rule_queries()


def label_values_call(query: str) -> tuple[str, str] | None:
    """label_values(selector, label) -> (selector, label); None for other variable queries."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*", query)
    return (match.group(1).strip(), match.group(2)) if match else None
