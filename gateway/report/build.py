"""`effgate report`: where quality is over- or underpaid, from the request log.

    effgate report --records PATH [--out DIR] [--policy FILE] [--since ISO]
                   [--format html,json] [--min-samples N]

Reads request and feedback records (a file, or a directory of `*.jsonl[.N]`), writes
OUT/report.html (with PNG plots beside it) and OUT/report.json (the same numbers, with a
schema version), and prints the top findings. Offline tooling: never on the request path.
Prompt text is never read into the report. docs/report.md explains every number.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson

from gateway.report.analysis import (
    CalibrationBin,
    Disagreement,
    GroupStats,
    LatencyHistogram,
    ModelReliability,
    Span,
    SpendSeries,
    calibration,
    disagreement,
    grouped,
    iso,
    latency_histograms,
    overall,
    reliability_by_model,
    span_of,
    spend_series,
)
from gateway.report.bars import bar_overpay, underpaid
from gateway.report.data import (
    LoadStats,
    Malformed,
    RecordsError,
    load_records,
    parse_time,
    record_files,
)
from gateway.report.findings import (
    Finding,
    FindingSettings,
    Found,
    describe,
    union_delta,
    usd,
)
from gateway.report.overpaid import Excess, decision_overpay, pin_overpay
from gateway.report.policy import PolicyHints, PolicyHintsError, load_hints

SCHEMA_VERSION = 1
Format = Literal["html", "json"]
FORMATS: tuple[Format, ...] = ("html", "json")


@dataclass(frozen=True, slots=True)
class Totals:
    overpaid_usd: float  # savings of all overpaid findings, each request counted once
    overpaid_monthly_usd: float | None
    underpaid_usd: float  # added cost of all underpaid findings, each request counted once
    underpaid_monthly_usd: float | None


@dataclass(frozen=True, slots=True)
class Report:
    source: str
    generated_at: str
    since: str | None
    policy: str | None
    settings: FindingSettings
    inputs: LoadStats
    span: Span
    overall: GroupStats
    routes: list[GroupStats]
    route_models: list[GroupStats]
    task_models: list[GroupStats]
    excess: list[Excess]
    series: SpendSeries
    calibration: list[CalibrationBin]
    latency: list[LatencyHistogram]
    findings: list[Finding]
    totals: Totals
    reliability: list[ModelReliability] = field(default_factory=list)
    disagreement: list[Disagreement] = field(default_factory=list)
    plots: dict[str, str] = field(default_factory=dict)  # plot key -> PNG file name in OUT


def build(
    source: Path,
    *,
    since: str | None = None,
    hints: PolicyHints | None = None,
    settings: FindingSettings | None = None,
    now: datetime | None = None,
) -> Report:
    """Load, join, aggregate and find; raises RecordsError when there is nothing to report."""
    hints = hints or PolicyHints()
    cfg = settings or FindingSettings()
    try:
        cutoff = None if since is None else parse_time(since)
    except Malformed:
        raise RecordsError(f"--since is not an ISO 8601 time: {since!r}") from None
    rec, inputs = load_records(record_files(source), cutoff)
    if rec.n == 0:
        raise RecordsError(f"no request records in {source}" + (f" since {since}" if since else ""))
    span = span_of(rec)
    decision, excess = decision_overpay(rec, span, cfg, hints)
    pins = pin_overpay(rec, span, cfg)
    # NOTE: a rule that both forces a dear model (a) and matches the cheap model's observed
    # acceptance (b) is reported once, as (b): observed outcomes beat predictions.
    seen = {(f.route, f.rule) for f, _ in pins}
    decision = [(f, i) for f, i in decision if f.rule is None or (f.route, f.rule) not in seen]
    over: list[Found] = decision + pins + bar_overpay(rec, span, cfg, hints)
    under = underpaid(rec, span, cfg, hints)
    over.sort(key=lambda f: f[0].effect.cost_delta_usd)
    under.sort(key=lambda f: -f[0].effect.cost_delta_usd)
    saved = -union_delta([i for _, i in over])
    added = union_delta([i for _, i in under])
    factor = span.monthly_factor
    totals = Totals(
        saved,
        None if factor is None else saved * factor,
        added,
        None if factor is None else added * factor,
    )
    return Report(
        source=str(source),
        generated_at=(now or datetime.now(UTC)).isoformat(timespec="seconds"),
        since=since,
        policy=hints.path,
        settings=cfg,
        inputs=inputs,
        span=span,
        overall=overall(rec),
        routes=grouped(rec, ("route",)),
        route_models=grouped(rec, ("route", "model")),
        task_models=grouped(rec, ("task", "model")),
        excess=sorted(excess, key=lambda e: -e.excess_usd),
        series=spend_series(rec, span),
        calibration=calibration(rec),
        latency=latency_histograms(rec),
        findings=[f for f, _ in over + under],
        totals=totals,
        reliability=reliability_by_model(rec),
        disagreement=disagreement(rec),
    )


def to_json(report: Report) -> dict[str, Any]:
    doc = asdict(report)
    doc["schema_version"] = SCHEMA_VERSION
    doc["span"].update(start_iso=iso(report.span.start), end_iso=iso(report.span.end))
    for finding in doc["findings"]:
        finding["evidence"] = dict(finding["evidence"])
    return {
        "schema_version": SCHEMA_VERSION,
        **{k: v for k, v in doc.items() if k != "schema_version"},
    }


def printable(text: str) -> str:
    """Record-supplied names on a terminal: control characters become '?'."""
    return "".join(c if c.isprintable() else "?" for c in text)


def summary(report: Report, top: int = 5) -> str:
    """The stdout text: headline numbers, then the top findings of each side with their $."""
    o, span, t = report.overall, report.span, report.totals
    monthly = span.monthly_factor is not None
    per = "month" if monthly else "records' span"
    saved = t.overpaid_monthly_usd if monthly else t.overpaid_usd
    added = t.underpaid_monthly_usd if monthly else t.underpaid_usd
    savings_pct = f" ({o.savings_pct:.1%})" if o.savings_pct is not None else ""
    lines = [
        f"effgate report: {o.requests} requests over {span.seconds / 86400:.1f} days "
        f"({iso(span.start)} .. {iso(span.end)}); spend {usd(o.spend_usd)}, "
        f"reference {usd(o.baseline_usd)}, saved {usd(o.savings_usd)}{savings_pct}",
        "",
        f"Where are we overpaying? {usd(saved or 0.0)} per {per} could be saved "
        "(a request in several findings counted once)",
    ]
    lines += _finding_lines([f for f in report.findings if f.kind != "underpaid"][:top], per)
    lines += ["", f"Where is quality underpaid? Fixing it adds {usd(added or 0.0)} per {per}"]
    lines += _finding_lines([f for f in report.findings if f.kind == "underpaid"][:top], per)
    lines += [
        "",
        f"Findings need >= {report.settings.min_samples} requests per group compared; "
        "the report has the evidence and the policy change for each.",
    ]
    return "\n".join(printable(line) for line in lines)


def _finding_lines(findings: list[Finding], per: str) -> list[str]:
    if not findings:
        return ["  nothing found"]
    return [f"  {i}. {f.title}: {describe(f.effect, per)}" for i, f in enumerate(findings, 1)]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="effgate report",
        description="Where quality is over- or underpaid: an HTML report with plots, a JSON twin "
        "and the top findings on stdout.",
    )
    parser.add_argument("--records", required=True, type=Path, help="records file or directory")
    parser.add_argument("--out", type=Path, default=Path("out"), help="output directory (out)")
    parser.add_argument("--policy", type=Path, help="policy YAML: current bars, rules, retries")
    parser.add_argument("--since", help="only requests at or after this ISO 8601 time")
    parser.add_argument("--format", default="html,json", help="html, json or html,json")
    parser.add_argument("--min-samples", type=int, default=30, help="per finding group (30)")
    parser.add_argument("--top", type=int, default=5, help="findings printed per kind (5)")
    return parser


def main(argv: list[str]) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on usage errors
        return int(exc.code or 0)
    formats = [f.strip() for f in str(args.format).split(",") if f.strip()]
    if not formats or any(f not in FORMATS for f in formats):
        return _fail(f"--format takes html, json or html,json, not {args.format!r}")
    if args.min_samples < 1:
        return _fail("--min-samples must be at least 1")
    if "html" in formats:  # checked before the work, not after it
        from gateway.report.plots import PlotsUnavailable, matplotlib_api

        try:
            matplotlib_api()
        except PlotsUnavailable as exc:
            print(f"effgate report: {exc} (or --format json, which has no plots)", file=sys.stderr)
            return 2
    try:
        hints = load_hints(args.policy)
        report = build(
            args.records,
            since=args.since,
            hints=hints,
            settings=FindingSettings(min_samples=args.min_samples),
        )
    except (RecordsError, PolicyHintsError) as exc:
        return _fail(str(exc))
    written = write(report, args.out, formats)
    print(summary(report, args.top))
    print("\nwrote " + ", ".join(str(p) for p in written))
    return 0


def write(report: Report, out: Path, formats: Sequence[str]) -> list[Path]:
    """Write the requested outputs into `out`; plots only come with the HTML."""
    from gateway.report.html import render
    from gateway.report.plots import draw

    out.mkdir(parents=True, exist_ok=True)
    written = []
    if "html" in formats:
        report = replace(report, plots=draw(report, out))
        html_path = out / "report.html"
        html_path.write_text(render(report), encoding="utf-8")
        written.append(html_path)
    if "json" in formats:
        json_path = out / "report.json"
        json_path.write_bytes(orjson.dumps(to_json(report), option=orjson.OPT_INDENT_2))
        written.append(json_path)
    return written


def _fail(message: str) -> int:
    print(f"effgate report: error: {message}", file=sys.stderr)
    return 2
