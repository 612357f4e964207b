"""The PNG plots of `effgate report`, drawn with matplotlib's object API on the Agg canvas.

No pyplot: figures are plain `Figure` objects, so nothing global is touched and no GUI backend
is ever imported. Labels come from records (route, model and task names), so `$` is escaped
(matplotlib would parse it as math text) and long names are cut. matplotlib comes with
`effgate[report]` and is imported when drawing, never by `import gateway.report.plots`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from gateway.report.build import Report

PLOTS = (
    "spend_over_time",
    "model_mix",
    "cost_per_accepted",
    "calibration",
    "reliability",
    "latency",
)


class PlotsUnavailable(ImportError):
    """matplotlib is not installed; the message says how to install it."""


def matplotlib_api() -> tuple[type[Figure], type[FigureCanvasAgg]]:
    """(Figure, FigureCanvasAgg); PlotsUnavailable without `effgate[report]`."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotsUnavailable("the plots need matplotlib: pip install 'effgate[report]'") from exc
    return Figure, FigureCanvasAgg


def text(name: str | None, limit: int = 32) -> str:
    value = "(none)" if name is None else "".join(c if c.isprintable() else "?" for c in name)
    value = value if len(value) <= limit else value[: limit - 1] + "…"
    return value.replace("$", r"\$")


def draw(report: Report, out: Path) -> dict[str, str]:
    """Write every plot as OUT/<name>.png; returns plot name -> file name."""
    figure, canvas = matplotlib_api()
    painters: dict[str, Callable[[Figure, Report], None]] = {
        "spend_over_time": _spend,
        "model_mix": _mix,
        "cost_per_accepted": _cost_per_accepted,
        "calibration": _calibration,
        "reliability": _reliability,
        "latency": _latency,
    }
    files = {}
    with warnings.catch_warnings():
        # NOTE: names may hold characters DejaVu Sans lacks; matplotlib warns and draws a box.
        warnings.filterwarnings(
            "ignore", message=r"Glyph .* missing from font", category=UserWarning
        )
        for name in PLOTS:
            fig = figure(figsize=(8, 4.2), dpi=100, layout="constrained")
            canvas(fig)
            painters[name](fig, report)
            fig.savefig(out / f"{name}.png")
            files[name] = f"{name}.png"
    return files


def _empty(fig: Figure, message: str) -> None:
    ax = fig.subplots()
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center")


def _spend(fig: Figure, report: Report) -> None:
    series = report.series
    ax = fig.subplots()
    when = [t / 86400 for t in series.starts]  # matplotlib date numbers: days since 1970
    width = (1 if series.bucket == "day" else 1 / 24) * 0.9
    ax.bar(
        when, series.baseline_usd, width=width, color="#c9d6e8", label="reference model (baseline)"
    )
    ax.bar(when, series.spend_usd, width=width, color="#2b6cb0", label="actual spend")
    ax.set_ylabel(f"USD per {series.bucket}")
    ax.set_title("Spend vs baseline over time")
    ax.legend(loc="upper left")
    ax.xaxis_date()
    fig.autofmt_xdate()


def _nulls_last(name: str | None) -> tuple[bool, str]:
    return name is None, name or ""


def _mix(fig: Figure, report: Report) -> None:
    rows = report.route_models
    if not rows:
        _empty(fig, "no requests")
        return
    routes = sorted({r.route for r in rows}, key=_nulls_last)
    models = sorted({r.model for r in rows}, key=_nulls_last)
    totals = {route: sum(r.requests for r in rows if r.route == route) for route in routes}
    ax = fig.subplots()
    left = [0.0] * len(routes)
    for model in models:
        share = [
            sum(r.requests for r in rows if r.route == route and r.model == model) / totals[route]
            for route in routes
        ]
        ax.barh([text(r) for r in routes], share, left=left, label=text(model))
        left = [a + b for a, b in zip(left, share, strict=True)]
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the route's requests")
    ax.set_title("Model mix per route")
    ax.legend(loc="lower right", fontsize="small")


def _cost_per_accepted(fig: Figure, report: Report) -> None:
    rows = [r for r in report.route_models if r.cost_per_accepted_usd is not None]
    if not rows:
        _empty(fig, "no accepted outcomes with feedback")
        return
    ax = fig.subplots()
    labels = [f"{text(r.route, 20)} / {text(r.model, 20)}" for r in rows]
    ax.barh(labels, [r.cost_per_accepted_usd or 0.0 for r in rows], color="#2f855a")
    ax.invert_yaxis()
    ax.set_xlabel("USD per accepted outcome")
    ax.set_title("Cost per accepted outcome, route / model")


def _calibration(fig: Figure, report: Report) -> None:
    bins = report.calibration
    if not bins:
        _empty(fig, "no requests with both feedback and a predicted p")
        return
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="#999", linestyle="--", label="perfect calibration")
    x = [b.mean_predicted_p for b in bins]
    y = [b.acceptance for b in bins]
    err = [
        [b.acceptance - b.acceptance_low for b in bins],
        [b.acceptance_high - b.acceptance for b in bins],
    ]
    ax.errorbar(x, y, yerr=err, fmt="o-", color="#2b6cb0", capsize=3, label="all requests (95% CI)")
    for r in report.route_models:
        if r.mean_predicted_p is not None and r.acceptance is not None:
            ax.scatter([r.mean_predicted_p], [r.acceptance], marker="s", s=24)
            name = f"{text(r.route, 14)}/{text(r.model, 14)}"
            where = (r.mean_predicted_p, r.acceptance)
            ax.annotate(name, where, fontsize="x-small", xytext=(3, 3), textcoords="offset points")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("predicted quality p (decision.p)")
    ax.set_ylabel("observed acceptance")
    ax.set_title("Acceptance vs predicted quality")
    ax.legend(loc="upper left", fontsize="small")


def _reliability(fig: Figure, report: Report) -> None:
    shown = [r for r in report.reliability if r.bins][:8]
    if not shown:
        _empty(fig, "no served requests with both an outcome and a predicted p")
        return
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="#999", linestyle="--", label="perfect calibration")
    for r in shown:
        x = [b.mean_predicted_p for b in r.bins]
        y = [b.acceptance for b in r.bins]
        brier = "" if r.brier is None else f", Brier {r.brier:.3f}"
        prior = "" if r.brier_prior is None else f" (prior {r.brier_prior:.3f})"
        ax.plot(
            x, y, "o-", markersize=4, label=f"{text(r.model, 24)}: n={r.requests}{brier}{prior}"
        )
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("predicted P(acceptable) of the serving model")
    ax.set_ylabel("observed acceptance (feedback, else the judge)")
    ax.set_title("Reliability per model")
    ax.legend(loc="upper left", fontsize="x-small")


def _latency(fig: Figure, report: Report) -> None:
    if not report.latency:
        _empty(fig, "no latencies logged")
        return
    ax = fig.subplots()
    for hist in report.latency:
        ax.stairs(hist.counts, hist.edges_ms, label=text(hist.model))
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("requests")
    ax.set_title("Latency distribution per model")
    ax.legend(fontsize="small")
