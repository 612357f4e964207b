"""The HTML page of `effgate report`: one self-contained file, plots as relative <img> PNGs.

Every string that came from records or files (route, model, task and rule names, file paths,
malformed-line reasons) goes through `html.escape`, including inside <pre> policy snippets:
task names are sent by clients and the report is shared widely.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from gateway.report.analysis import GroupStats, iso
from gateway.report.findings import Finding, describe, usd

if TYPE_CHECKING:
    from gateway.report.build import Report

Kind = Literal["text", "int", "usd", "pct", "p", "ms", "num"]
Column = tuple[str, Callable[[Any], object], Kind]

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1280px;color:#1a202c}
table{border-collapse:collapse;margin:8px 0 20px;font-size:13px}
th,td{border:1px solid #cbd5e0;padding:3px 7px;text-align:right}
th{background:#edf2f7}td.text,th.text{text-align:left}
section.finding{border-left:4px solid #2b6cb0;padding:4px 14px;margin:14px 0;background:#f7fafc}
section.underpaid{border-color:#c05621}
pre{background:#1a202c;color:#f7fafc;padding:10px;overflow-x:auto}
img{max-width:100%;border:1px solid #e2e8f0;margin:6px 0}
.note{color:#4a5568;font-size:13px}
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: object, kind: Kind) -> str:
    """The text of one cell (unescaped); None and NaN read as a dash."""
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if kind == "text" or isinstance(value, str):
        return str(value)
    number = float(value)  # type: ignore[arg-type]
    if kind == "int":
        return f"{int(number):,}"
    if kind == "usd":
        return usd(number)
    if kind == "pct":
        return f"{number * 100:.1f}%"
    if kind == "p":
        return f"{number:.3f}"
    if kind == "ms" or abs(number) >= 1000:
        return f"{number:,.0f}"
    return f"{number:.4g}"


def table(columns: Sequence[Column], rows: Iterable[Any]) -> str:
    head = "".join(
        f'<th class="{"text" if k == "text" else "num"}">{esc(h)}</th>' for h, _, k in columns
    )
    body = []
    for row in rows:
        cells = "".join(f'<td class="{k}">{esc(fmt(get(row), k))}</td>' for _, get, k in columns)
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _interval(g: GroupStats) -> str:
    if g.acceptance_low is None or g.acceptance_high is None:
        return "–"
    return f"{g.acceptance_low * 100:.1f}–{g.acceptance_high * 100:.1f}%"


GROUP_COLUMNS: list[Column] = [
    ("requests", lambda g: g.requests, "int"),
    ("errors", lambda g: g.errors, "int"),
    ("error rate", lambda g: g.error_rate, "pct"),
    ("feedback", lambda g: g.feedback_coverage, "pct"),
    ("acceptance", lambda g: g.acceptance, "pct"),
    ("95% CI", _interval, "text"),
    ("spend", lambda g: g.spend_usd, "usd"),
    ("baseline", lambda g: g.baseline_usd, "usd"),
    ("savings", lambda g: g.savings_usd, "usd"),
    ("savings %", lambda g: g.savings_pct, "pct"),
    ("cost / accepted", lambda g: g.cost_per_accepted_usd, "usd"),
    ("tokens in", lambda g: g.tokens_in_per_request, "num"),
    ("tokens out", lambda g: g.tokens_out_per_request, "num"),
    ("p50 ms", lambda g: g.latency_p50_ms, "ms"),
    ("p95 ms", lambda g: g.latency_p95_ms, "ms"),
    ("p99 ms", lambda g: g.latency_p99_ms, "ms"),
    ("TTFT p50", lambda g: g.ttft_p50_ms, "ms"),
    ("TTFT p95", lambda g: g.ttft_p95_ms, "ms"),
    ("mean p", lambda g: g.mean_predicted_p, "p"),
    ("calib. gap", lambda g: g.calibration_gap, "p"),
]
ROUTE: Column = ("route", lambda g: g.route, "text")
MODEL: Column = ("model", lambda g: g.model, "text")
TASK: Column = ("task", lambda g: g.task, "text")


def _finding(f: Finding, per: str) -> str:
    evidence = table(
        [("evidence", lambda r: r[0], "text"), ("value", lambda r: r[1], "num")], f.evidence
    )
    css = "finding underpaid" if f.kind == "underpaid" else "finding"
    return (
        f'<section class="{css}"><h3>{esc(f.title)}</h3><p class="note">{esc(f.kind)}</p>'
        f"<p><b>Estimated effect:</b> {esc(describe(f.effect, per))}</p>{evidence}"
        f"<p><b>Policy change</b> (YAML):</p><pre>{esc(f.policy_change)}</pre></section>"
    )


def _findings(report: Report, kinds: set[str], per: str) -> str:
    found = [f for f in report.findings if f.kind in kinds]
    if not found:
        return (
            f"<p>Nothing found with at least {report.settings.min_samples} requests per group.</p>"
        )
    return "".join(_finding(f, per) for f in found)


def _inputs(report: Report) -> str:
    i = report.inputs
    files = table(
        [
            ("file", lambda f: f.path, "text"),
            ("lines", lambda f: f.lines, "int"),
            ("requests", lambda f: f.requests, "int"),
            ("feedback", lambda f: f.feedback, "int"),
            ("malformed", lambda f: f.malformed, "int"),
        ],
        i.files,
    )
    counts = [
        ("malformed lines (skipped)", i.malformed),
        ("records of other types", i.other_types),
        ("duplicate request ids (last kept)", i.duplicate_requests),
        ("requests before --since", i.outside_window),
        ("feedback records", i.feedback_records),
        ("feedback without a matching request", i.feedback_orphans),
        ("feedback with neither accepted nor score (ignored)", i.feedback_empty),
        ("feedback judged by score >= 0.5", i.feedback_by_score),
        ("feedback overridden by a later one", i.feedback_overridden),
    ]
    listed = table([("count", lambda r: r[0], "text"), ("", lambda r: r[1], "int")], counts)
    examples = "".join(f"<li>{esc(x)}</li>" for x in i.malformed_examples)
    return (
        files + listed + (f"<p>First malformed lines:</p><ul>{examples}</ul>" if examples else "")
    )


def _excess(report: Report) -> str:
    if not report.excess:
        return "<p>No request was served above a candidate predicted to clear its bar.</p>"
    columns: list[Column] = [
        ("route", lambda e: e.route, "text"),
        ("cause", lambda e: e.cause, "text"),
        ("served by", lambda e: e.model, "text"),
        ("cheaper candidate", lambda e: e.alternative, "text"),
        ("requests", lambda e: e.requests, "int"),
        ("excess spend", lambda e: e.excess_usd, "usd"),
    ]
    return table(columns, report.excess)


def _learning(report: Report) -> str:
    rel: list[Column] = [
        ("model", lambda r: r.model, "text"),
        ("requests with an outcome", lambda r: r.requests, "int"),
        ("Brier (P used)", lambda r: r.brier, "p"),
        ("Brier (prior's P)", lambda r: r.brier_prior, "p"),
    ]
    dis: list[Column] = [
        ("route", lambda d: d.route, "text"),
        ("decisions", lambda d: d.decisions, "int"),
        ("learned differs", lambda d: d.differ, "int"),
        ("learned cheaper", lambda d: d.learned_cheaper, "int"),
        ("learned dearer", lambda d: d.learned_dearer, "int"),
        ("mean |P - prior|", lambda d: d.mean_abs_p_gap, "p"),
        ("acceptance when different", lambda d: d.acceptance_when_differ, "pct"),
        ("outcomes", lambda d: d.outcomes_when_differ, "int"),
    ]
    out = table(rel, report.reliability) if report.reliability else "<p>No outcomes yet.</p>"
    if any(d.differ for d in report.disagreement):
        out += "<p>Where the learned router chooses differently from the prior:</p>"
        out += table(dis, report.disagreement)
    elif report.disagreement:
        out += "<p>The learned router and the prior choose the same model everywhere.</p>"
    return out


def _plots(report: Report) -> str:
    captions = {
        "spend_over_time": "Spend vs baseline (what the reference model would have cost) over time",
        "model_mix": "Model mix per route",
        "cost_per_accepted": "Cost per accepted outcome per route and model",
        "calibration": "Observed acceptance vs predicted quality (calibration)",
        "reliability": "Reliability per model: predicted P against observed acceptance",
        "latency": "Latency distribution per model",
    }
    return "".join(
        f'<figure><img src="{esc(file)}" alt="{esc(captions.get(name, name))}">'
        f"<figcaption>{esc(captions.get(name, name))}</figcaption></figure>"
        for name, file in report.plots.items()
    )


def render(report: Report) -> str:
    o, span, t, cfg = report.overall, report.span, report.totals, report.settings
    monthly = span.monthly_factor is not None
    per = "month" if monthly else "records' span"
    saved = t.overpaid_monthly_usd if monthly else t.overpaid_usd
    added = t.underpaid_monthly_usd if monthly else t.underpaid_usd
    head = (
        f"<p>{o.requests:,} requests from {esc(iso(span.start))} to {esc(iso(span.end))} "
        f"({span.seconds / 86400:.2f} days) in <code>{esc(report.source)}</code>"
        + (f", since {esc(report.since)}" if report.since else "")
        + (f"; policy <code>{esc(report.policy)}</code>" if report.policy else "")
        + f". Spend {esc(fmt(o.spend_usd, 'usd'))}, reference {esc(fmt(o.baseline_usd, 'usd'))}, "
        f"savings {esc(fmt(o.savings_usd, 'usd'))} ({esc(fmt(o.savings_pct, 'pct'))}); acceptance "
        f"{esc(fmt(o.acceptance, 'pct'))} on {o.with_feedback:,} requests with feedback.</p>"
        f"<p><b>Where are we overpaying?</b> About {esc(fmt(saved, 'usd'))} per {esc(per)} "
        f"(each request counted once across findings). <b>Underpaid quality</b> would cost "
        f"{esc(fmt(added, 'usd'))} per {esc(per)} to fix.</p>"
        f'<p class="note">Every finding needs at least {cfg.min_samples} requests in each group it '
        f"compares (--min-samples); dollar effects per month are the records' amounts scaled by "
        f"30 days / {span.seconds / 86400:.2f} days. Generated {esc(report.generated_at)}.</p>"
    )
    if not monthly:
        head += '<p class="note">The records span less than an hour: no monthly extrapolation.</p>'
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>effgate report</title><style>{CSS}</style></head><body>",
        "<h1>effgate report</h1>",
        head,
        "<h2>Where are we overpaying?</h2>",
        _findings(report, {"overpaid_decision", "overpaid_pin", "overpaid_bar"}, per),
        "<h2>Where is quality underpaid?</h2>",
        _findings(report, {"underpaid"}, per),
        "<h2>Plots</h2>",
        _plots(report),
        "<h2>Per route</h2>",
        table([ROUTE, *GROUP_COLUMNS], report.routes),
        "<h2>Per route and model</h2>",
        table([ROUTE, MODEL, *GROUP_COLUMNS], report.route_models),
        "<h2>Per task and model</h2>",
        table([TASK, MODEL, *GROUP_COLUMNS], report.task_models),
        "<h2>Calibration per model, and the learned router against the prior</h2>",
        _learning(report),
        "<h2>Spend above a cheaper candidate that cleared the bar, by cause</h2>",
        _excess(report),
        "<h2>Input</h2>",
        _inputs(report),
        '<p class="note">Definitions and estimation methods: docs/report.md. Prompt text is never '
        "read into this report.</p></body></html>",
    ]
    return "\n".join(parts)
