"""The numbers of `effgate report`: per-group tables, the time span, spend over time, calibration.

Definitions (docs/report.md repeats them for readers):
- error: status >= 400 or outcome != "ok"; error rate = errors / requests.
- acceptance = accepted / requests with feedback, with a 95% Wilson interval.
- cost per accepted outcome = spend on requests with feedback / accepted among them (the same
  denominator as acceptance, so partial feedback coverage does not inflate it).
- savings = baseline (reference model) spend - spend.
- calibration gap = acceptance - mean predicted p, over requests with feedback and a p.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from gateway.report.data import ACCEPTED, NO_FEEDBACK, Records
from gateway.report.stats import percentiles, ratio, wilson

DAY = 86400.0
MONTH = 30 * DAY


@dataclass(frozen=True, slots=True)
class GroupStats:
    route: str | None
    model: str | None
    task: str | None
    requests: int
    errors: int
    error_rate: float
    with_feedback: int
    feedback_coverage: float
    accepted: int
    acceptance: float | None
    acceptance_low: float | None
    acceptance_high: float | None
    spend_usd: float
    baseline_usd: float
    savings_usd: float
    savings_pct: float | None
    cost_per_accepted_usd: float | None
    tokens_in_per_request: float
    tokens_out_per_request: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    mean_predicted_p: float | None
    calibration_gap: float | None


@dataclass(frozen=True, slots=True)
class Span:
    start: float
    end: float
    seconds: float
    monthly_factor: float | None  # None when the span is too short to extrapolate (< 1 hour)


@dataclass(frozen=True, slots=True)
class SpendSeries:
    bucket: Literal["hour", "day"]
    starts: tuple[float, ...]
    spend_usd: tuple[float, ...]
    baseline_usd: tuple[float, ...]
    requests: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CalibrationBin:
    p_low: float
    p_high: float
    with_feedback: int
    mean_predicted_p: float
    acceptance: float
    acceptance_low: float
    acceptance_high: float


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def label(names: tuple[str, ...], code: int) -> str | None:
    return None if code < 0 else names[code]


def summarize(
    rec: Records, rows: NDArray[np.bool_], route: int, model: int, task: int
) -> GroupStats:
    """All table columns for the requests selected by the boolean mask `rows`."""
    n = int(rows.sum())
    errors = int((rec.failed & rows).sum())
    fed = rows & (rec.accepted != NO_FEEDBACK)
    n_fed = int(fed.sum())
    k = int((fed & (rec.accepted == ACCEPTED)).sum())
    low, high = wilson(k, n_fed)
    spend = float(rec.cost[rows].sum())
    baseline = float(rec.baseline[rows].sum())
    p50, p95, p99 = percentiles(rec.latency_ms[rows], (50, 95, 99))
    t50, t95 = percentiles(rec.ttft_ms[rows & rec.stream], (50, 95))
    calib = fed & np.isfinite(rec.p)
    mean_p = float(rec.p[calib].mean()) if calib.any() else None
    calib_acc = float((rec.accepted[calib] == ACCEPTED).mean()) if calib.any() else None
    acceptance = ratio(k, n_fed)
    return GroupStats(
        route=label(rec.routes, route),
        model=label(rec.models, model),
        task=label(rec.tasks, task),
        requests=n,
        errors=errors,
        error_rate=errors / n if n else 0.0,
        with_feedback=n_fed,
        feedback_coverage=n_fed / n if n else 0.0,
        accepted=k,
        acceptance=acceptance,
        acceptance_low=None if math.isnan(low) else low,
        acceptance_high=None if math.isnan(high) else high,
        spend_usd=spend,
        baseline_usd=baseline,
        savings_usd=baseline - spend,
        savings_pct=ratio(baseline - spend, baseline),
        cost_per_accepted_usd=ratio(float(rec.cost[fed].sum()), k),
        tokens_in_per_request=float(rec.tokens_in[rows].mean()) if n else 0.0,
        tokens_out_per_request=float(rec.tokens_out[rows].mean()) if n else 0.0,
        latency_p50_ms=p50,
        latency_p95_ms=p95,
        latency_p99_ms=p99,
        ttft_p50_ms=t50,
        ttft_p95_ms=t95,
        mean_predicted_p=mean_p,
        calibration_gap=None if mean_p is None or calib_acc is None else calib_acc - mean_p,
    )


def overall(rec: Records) -> GroupStats:
    return summarize(rec, np.ones(rec.n, dtype=bool), -1, -1, -1)


def grouped(rec: Records, by: tuple[Literal["route", "model", "task"], ...]) -> list[GroupStats]:
    """One GroupStats per distinct combination of the `by` columns, biggest spend first."""
    codes = {"route": rec.route, "model": rec.model, "task": rec.task}
    keys = np.stack([codes[name] for name in by], axis=1) if rec.n else np.empty((0, len(by)))
    out = []
    for key in np.unique(keys, axis=0):
        rows = np.all(keys == key, axis=1)
        picked = dict(zip(by, (int(v) for v in key), strict=True))
        out.append(
            summarize(
                rec, rows, picked.get("route", -1), picked.get("model", -1), picked.get("task", -1)
            )
        )
    return sorted(out, key=lambda g: (-g.spend_usd, str(g.route), str(g.model), str(g.task)))


def span_of(rec: Records) -> Span:
    start, end = float(rec.time.min()), float(rec.time.max())
    seconds = end - start
    return Span(start, end, seconds, MONTH / seconds if seconds >= 3600 else None)


def spend_series(rec: Records, span: Span) -> SpendSeries:
    """Spend and baseline per hour (spans up to 3 days) or per day (longer), UTC buckets."""
    bucket: Literal["hour", "day"] = "hour" if span.seconds <= 3 * DAY else "day"
    width = 3600.0 if bucket == "hour" else DAY
    first = math.floor(span.start / width) * width
    index = ((rec.time - first) // width).astype(np.int64)
    size = int(index.max()) + 1
    spend = np.bincount(index, weights=rec.cost, minlength=size)
    base = np.bincount(index, weights=rec.baseline, minlength=size)
    count = np.bincount(index, minlength=size)
    return SpendSeries(
        bucket=bucket,
        starts=tuple(first + i * width for i in range(size)),
        spend_usd=tuple(float(v) for v in spend),
        baseline_usd=tuple(float(v) for v in base),
        requests=tuple(int(v) for v in count),
    )


def calibration(rec: Records, width: float = 0.1) -> list[CalibrationBin]:
    """Observed acceptance per bin of predicted p (requests with both feedback and a p)."""
    rows = (rec.accepted != NO_FEEDBACK) & np.isfinite(rec.p)
    p = rec.p[rows]
    ok = rec.accepted[rows] == ACCEPTED
    edges = int(round(1 / width))
    index = np.clip((p / width).astype(np.int64), 0, edges - 1)
    out = []
    for i in range(edges):
        sel = index == i
        n = int(sel.sum())
        if n == 0:
            continue
        k = int(ok[sel].sum())
        low, high = wilson(k, n)
        bin_ = CalibrationBin(i * width, (i + 1) * width, n, float(p[sel].mean()), k / n, low, high)
        out.append(bin_)
    return out


@dataclass(frozen=True, slots=True)
class LatencyHistogram:
    model: str
    edges_ms: tuple[float, ...]  # log-spaced, shared by every model
    counts: tuple[int, ...]


def latency_histograms(rec: Records, bins: int = 30) -> list[LatencyHistogram]:
    """Latency counts per model on log-spaced bins shared by all models."""
    finite = np.isfinite(rec.latency_ms) & (rec.latency_ms > 0) & (rec.model >= 0)
    if not finite.any():
        return []
    low, high = float(rec.latency_ms[finite].min()), float(rec.latency_ms[finite].max())
    edges = np.geomspace(low, max(high, low * 1.01), bins + 1)
    out = []
    for model in np.unique(rec.model[finite]):
        counts, _ = np.histogram(rec.latency_ms[finite & (rec.model == model)], bins=edges)
        out.append(
            LatencyHistogram(rec.models[model], tuple(map(float, edges)), tuple(map(int, counts)))
        )
    return out


@dataclass(frozen=True, slots=True)
class ModelReliability:
    """One model's reliability: observed acceptance per bin of the P it was served with, and
    the Brier score of that P against the prior's P for the same requests (where recorded)."""

    model: str
    requests: int  # served with an outcome (feedback, or the judge's grade) and a p
    bins: tuple[CalibrationBin, ...]
    brier: float | None
    brier_prior: float | None  # None when no request recorded the prior's P


@dataclass(frozen=True, slots=True)
class Disagreement:
    """Where the learned router and the prior would choose differently, per route.

    For every request with a bar whose eligible candidates all have both Ps, the choice each
    would make (the cheapest eligible candidate at or above the bar, else the highest P) is
    compared; `learned_cheaper` counts disagreements where the learned router's choice has
    the lower expected cost. Acceptance is over the disagreeing requests with an outcome."""

    route: str
    decisions: int
    differ: int
    learned_cheaper: int
    learned_dearer: int
    mean_abs_p_gap: float | None  # |p - p_prior| of the served model, over the decisions
    acceptance_when_differ: float | None
    outcomes_when_differ: int


def _choose(p: NDArray[np.float64], cost: NDArray[np.float64], bar: float) -> int:
    above = np.flatnonzero(p >= bar)
    if above.size:
        return int(above[np.lexsort((-p[above], cost[above]))[0]])
    return int(np.argmax(p))


def reliability_by_model(rec: Records, width: float = 0.1) -> list[ModelReliability]:
    """Per served model, most outcomes first (requests with an outcome and a p)."""
    rows = (rec.accepted != NO_FEEDBACK) & np.isfinite(rec.p) & (rec.model >= 0)
    prior = _served_prior(rec)
    out = []
    for code in np.unique(rec.model[rows]):
        sel = rows & (rec.model == code)
        p, ok = rec.p[sel], (rec.accepted[sel] == ACCEPTED).astype(np.float64)
        edges = int(round(1 / width))
        index = np.clip((p / width).astype(np.int64), 0, edges - 1)
        bins = []
        for i in range(edges):
            b = index == i
            n = int(b.sum())
            if n:
                k = int(ok[b].sum())
                low, high = wilson(k, n)
                bins.append(
                    CalibrationBin(
                        i * width, (i + 1) * width, n, float(p[b].mean()), k / n, low, high
                    )
                )
        pp = prior[sel]
        has = np.isfinite(pp)
        out.append(
            ModelReliability(
                model=rec.models[int(code)],
                requests=int(sel.sum()),
                bins=tuple(bins),
                brier=float(np.mean((p - ok) ** 2)),
                brier_prior=float(np.mean((pp[has] - ok[has]) ** 2)) if has.any() else None,
            )
        )
    out.sort(key=lambda r: -r.requests)
    return out


def _served_prior(rec: Records) -> NDArray[np.float64]:
    """The prior's P of the model that served each request (nan where not recorded)."""
    out = np.full(rec.n, np.nan)
    prior = rec.cand_p_prior
    if prior is None or prior.size == 0:
        return out
    row = np.repeat(np.arange(rec.n), np.diff(rec.cand_offsets))
    match = np.flatnonzero(rec.cand_model == rec.model[row])
    rows, first = np.unique(row[match], return_index=True)
    out[rows] = prior[match[first]]
    return out


def disagreement(rec: Records) -> list[Disagreement]:
    """Per route: how often, and which way, the learned router departs from the prior."""
    prior = rec.cand_p_prior
    if prior is None:
        return []
    served_prior = _served_prior(rec)
    tallies: dict[int, list[float]] = {}
    for i in range(rec.n):
        bar = rec.bar[i]
        lo, hi = rec.cand_offsets[i], rec.cand_offsets[i + 1]
        ok = rec.cand_eligible[lo:hi]
        p, pp, cost = rec.cand_p[lo:hi][ok], prior[lo:hi][ok], rec.cand_cost[lo:hi][ok]
        if (
            not np.isfinite(bar)
            or p.size == 0
            or not (np.isfinite(p).all() and np.isfinite(pp).all())
        ):
            continue
        t = tallies.setdefault(int(rec.route[i]), [0, 0, 0, 0, 0.0, 0, 0])
        learned, by_prior = _choose(p, cost, float(bar)), _choose(pp, cost, float(bar))
        t[0] += 1
        if np.isfinite(served_prior[i]) and np.isfinite(rec.p[i]):
            t[4] += abs(float(rec.p[i]) - float(served_prior[i]))
        if learned != by_prior:
            t[1] += 1
            t[2] += cost[learned] < cost[by_prior]
            t[3] += cost[learned] > cost[by_prior]
            if rec.accepted[i] != NO_FEEDBACK:
                t[5] += 1
                t[6] += rec.accepted[i] == ACCEPTED
    out = []
    for code, (n, differ, cheaper, dearer, gap, outcomes, accepted) in sorted(tallies.items()):
        out.append(
            Disagreement(
                route=rec.routes[code] if code >= 0 else "(none)",
                decisions=int(n),
                differ=int(differ),
                learned_cheaper=int(cheaper),
                learned_dearer=int(dearer),
                mean_abs_p_gap=gap / n if n else None,
                acceptance_when_differ=accepted / outcomes if outcomes else None,
                outcomes_when_differ=int(outcomes),
            )
        )
    return out
