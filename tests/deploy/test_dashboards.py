"""Grafana dashboards and Prometheus rules read only metrics and labels from docs/contracts.md."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.deploy.queries import (
    DASHBOARDS,
    DEPLOY,
    TARGET_LABELS,
    Query,
    all_queries,
    contract_metrics,
    grouping_labels,
    load_dashboard,
    metric_names,
    panels,
    recorded_names,
    rules,
    selectors,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
QUERIES = all_queries()


def test_contract_table_parses() -> None:
    metrics = contract_metrics()
    # spot checks: the table's shapes (histogram suffixes, the "used / _total_bytes" row)
    assert metrics["effgate_request_duration_seconds_bucket"].type == "histogram"
    assert metrics["effgate_gpu_memory_total_bytes"].labels == {"gpu", "name"}
    assert metrics["effgate_tokens_total"].labels == {"route", "model", "direction"}
    assert metrics["effgate_in_flight_requests"].labels == frozenset()
    assert metrics["effgate_records_dropped_total"].labels == {"sink"}
    assert metrics["effgate_policy_info"].labels == {"sha256", "version"}
    assert metrics["effgate_budget_usd"].labels == {"period"}


def test_the_three_dashboards_exist() -> None:
    assert [p.name for p in DASHBOARDS] == ["efficiency.json", "gpu.json", "reliability.json"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_valid_and_uses_the_datasource_variable(path) -> None:
    doc = load_dashboard(path)
    assert doc["uid"] and doc["title"].startswith("effgate")
    assert 36 <= doc["schemaVersion"] <= 41
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert "model" in variables
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == DATASOURCE, var["name"]
            assert str(var["query"]["query"]).startswith("label_values(")
            assert var["allValue"] == ".*"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    body = panels(doc)
    assert len(body) >= 8
    for panel in body:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_variables_are_used(path) -> None:
    doc = load_dashboard(path)
    text = json.dumps(panels(doc))
    for var in doc["templating"]["list"]:
        assert f"${var['name']}" in text or f"${{{var['name']}}}" in text, var["name"]


def test_dashboards_cover_what_the_brief_asks_for() -> None:
    titles = {p.name: " | ".join(x["title"] for x in panels(load_dashboard(p))) for p in DASHBOARDS}
    for words, board in [
        (
            [
                "Spend",
                "Savings %",
                "Cost per accepted outcome",
                "Model mix",
                "Predicted quality",
                "Acceptance rate",
                "Tokens per request",
            ],
            "efficiency.json",
        ),
        (
            [
                "by status",
                "5xx share",
                "p50 / p95 / p99",
                "Time to first token",
                "Retries",
                "Fallbacks",
                "Circuit state",
                "In-flight",
                "Policy reloads",
            ],
            "reliability.json",
        ),
        (["Power", "Energy per output token", "utilisation", "memory"], "gpu.json"),
    ]:
        for word in words:
            assert word in titles[board], (board, word)


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.source)
def test_query_reads_only_contract_metrics_and_labels(query: Query) -> None:
    contract = contract_metrics()
    recorded = {r["record"] for r in rules() if "record" in r}
    names = metric_names(query.expr)
    assert names or recorded_names(query.expr), f"{query.source} reads no effgate metric"
    unknown = names - contract.keys()
    assert not unknown, f"{query.source}: not in docs/contracts.md: {sorted(unknown)}"
    assert recorded_names(query.expr) <= recorded, query.source
    allowed = set(TARGET_LABELS)
    for name in names:
        allowed |= contract[name].labels
    for name, labels in selectors(query.expr):
        extra = labels - contract[name].labels - TARGET_LABELS
        assert not extra, f"{query.source}: {name} has no label(s) {sorted(extra)}"
    extra = grouping_labels(query.expr) - allowed
    assert not extra, f"{query.source}: grouping by unknown label(s) {sorted(extra)}"


def test_every_rule_has_severity_for_and_a_runbook() -> None:
    alerts = [r for r in rules() if "alert" in r]
    names = {a["alert"] for a in alerts}
    for wanted in [
        "EffgateHighErrorRate",
        "EffgateHighLatencyP99",
        "EffgateSlowTimeToFirstToken",
        "EffgateFallbackSurge",
        "EffgateBudgetBurn",
        "EffgatePolicyReloadFailed",
        "EffgateNoTraffic",
        "EffgateCircuitOpen",
        "EffgateRecordsDropped",
    ]:
        assert wanted in names
    for alert in alerts:
        assert "for" in alert, alert["alert"]
        assert alert["labels"]["severity"] in ("warning", "critical"), alert["alert"]
        annotations = alert["annotations"]
        assert {"summary", "description", "runbook"} <= annotations.keys(), alert["alert"]
        anchor = "docs/operations.md#" + alert["alert"].lower()
        if alert["alert"] not in ("EffgateAllCircuitsOpen", "EffgateBudgetExceeded"):
            assert anchor in annotations["runbook"], alert["alert"]


def test_runbook_anchors_exist_in_operations_doc() -> None:
    doc = (DEPLOY.parent / "docs" / "operations.md").read_text()
    headings = {
        line.lstrip("#").strip().lower() for line in doc.splitlines() if line.startswith("#")
    }
    for alert in rules():
        for anchor in _anchors(alert.get("annotations", {}).get("runbook", "")):
            assert anchor in headings, f"{alert.get('alert')}: no heading for #{anchor}"


def _anchors(text: str) -> list[str]:
    return re.findall(r"docs/operations\.md#([a-z0-9-]+)", text)


def test_grafana_provisioning_points_at_the_dashboards() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert datasources["datasources"][0]["type"] == "prometheus"
    providers = yaml.safe_load((provisioning / "dashboards" / "effgate.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{path}:ro" in mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
