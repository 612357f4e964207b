"""Findings of `effgate report`: what a finding is, and the counterfactual machinery they share.

A finding names where quality is over- or underpaid, with evidence numbers, a YAML policy change
and its estimated effect. Effects are counterfactuals computed per request from the decision the
gateway logged: `decision.candidates` holds each candidate's predicted p, eligibility and expected
cost, so "what would this request have cost under another choice" is
`cost_usd * expected_cost(new) / expected_cost(served)` (the logged cost scaled by the price
ratio, so real token counts carry over; `cost + expected difference` when the served model's
expected cost is 0). A changed bar re-picks the way the engine does: the cheapest eligible
candidate with p >= bar, else the eligible candidate with the highest p.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from gateway.report.analysis import Span
from gateway.report.data import ACCEPTED, NO_FEEDBACK, Records
from gateway.report.stats import newcombe, wilson

FindingKind = Literal["overpaid_decision", "overpaid_pin", "overpaid_bar", "underpaid"]
Basis = Literal["observed", "predicted"]
Evidence = tuple[tuple[str, float | int | str | None], ...]
BY_BAR = ("cheapest_above_bar", "best_below_bar")


@dataclass(frozen=True, slots=True)
class FindingSettings:
    min_samples: int = 30  # requests (with feedback, where acceptance is compared) per group
    alpha: float = 0.05  # significance level of the tests
    similar_within: float = 0.02  # (b) an acceptance gap this small counts as equal
    max_hidden_gap: float = 0.05  # (b) a larger gap blocks even when not significant
    calibration_margin: float = 0.02  # (c) acceptance must beat predicted p by this much
    material_gap: float = 0.05  # (d) acceptance must miss the bar by this much


@dataclass(frozen=True, slots=True)
class Effect:
    requests_affected: int
    cost_delta_usd: float  # over the records' span; negative = saves money
    monthly_cost_delta_usd: float | None
    acceptance_delta: float | None  # expected change, in absolute points of acceptance
    acceptance_delta_low: float | None  # 95% interval
    acceptance_delta_high: float | None
    acceptance_basis: Basis


@dataclass(frozen=True, slots=True)
class Finding:
    kind: FindingKind
    title: str
    route: str | None
    model: str | None
    task: str | None
    rule: str | None
    evidence: Evidence
    policy_change: str
    effect: Effect


@dataclass(frozen=True, slots=True)
class Impact:
    """Per-request cost deltas of one finding, so overlapping findings are not summed twice."""

    rows: NDArray[np.int64]
    cost_delta: NDArray[np.float64]


Found = tuple[Finding, Impact]


def code(names: tuple[str, ...], name: str) -> int:
    """The vocab code of `name`; -2 (matches nothing, not even null) when absent."""
    return names.index(name) if name in names else -2


@dataclass(frozen=True, slots=True)
class Candidates:
    """Dense (requests x models) view of decision.candidates for a subset of rows."""

    rows: NDArray[np.int64]
    p: NDArray[np.float64]  # nan: not a candidate
    cost: NDArray[np.float64]
    eligible: NDArray[np.bool_]

    def usable(self) -> NDArray[np.bool_]:
        return self.eligible & np.isfinite(self.p) & np.isfinite(self.cost)


def candidates(rec: Records, rows: NDArray[np.int64]) -> Candidates:
    starts = rec.cand_offsets[rows]
    counts = rec.cand_offsets[rows + 1] - starts
    total = int(counts.sum())
    local = np.repeat(np.arange(rows.size), counts)
    pos = (
        np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(starts, counts)
    )
    col = rec.cand_model[pos]
    shape = (rows.size, len(rec.models))
    p, cost = np.full(shape, np.nan), np.full(shape, np.nan)
    eligible = np.zeros(shape, dtype=bool)
    p[local, col] = rec.cand_p[pos]
    cost[local, col] = rec.cand_cost[pos]
    eligible[local, col] = rec.cand_eligible[pos]
    return Candidates(rows, p, cost, eligible)


def repick(cands: Candidates, bar: float | NDArray[np.float64]) -> NDArray[np.int64]:
    """The engine's choice under `bar` (one, or one per row); -1 where no candidate is usable."""
    ok = cands.usable()
    if ok.shape[1] == 0:  # no request named a model at all
        return np.full(ok.shape[0], -1, dtype=np.int64)
    above = ok & (cands.p >= np.reshape(bar, (-1, 1)) - 1e-9)
    cheapest = np.argmin(np.where(above, cands.cost, np.inf), axis=1)
    best = np.argmax(np.where(ok, cands.p, -np.inf), axis=1)
    return np.where(above.any(axis=1), cheapest, np.where(ok.any(axis=1), best, -1))


@dataclass(frozen=True, slots=True)
class Switch:
    """What each row would cost, and its predicted p, if served by `new` instead."""

    cost: NDArray[np.float64]
    p_new: NDArray[np.float64]
    p_served: NDArray[np.float64]
    valid: NDArray[np.bool_]  # both models priced in the decision and the model changes


def switch(rec: Records, cands: Candidates, new: NDArray[np.int64]) -> Switch:
    k = np.arange(cands.rows.size)
    served = rec.model[cands.rows]
    safe_new = np.where(new >= 0, new, 0)
    c_served, c_new = cands.cost[k, served], cands.cost[k, safe_new]
    actual = rec.cost[cands.rows]
    valid = (new >= 0) & (new != served) & np.isfinite(c_served) & np.isfinite(c_new)
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = np.where(c_served > 0, actual * c_new / c_served, actual + c_new - c_served)
    p_served = np.where(np.isfinite(cands.p[k, served]), cands.p[k, served], rec.p[cands.rows])
    return Switch(np.where(valid, scaled, actual), cands.p[k, safe_new], p_served, valid)


def served_prices(rec: Records, rows: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Mean logged cost per request of each model over `rows` (nan: the model served none)."""
    size = len(rec.models)
    rows = rows & (rec.model >= 0)
    served = np.bincount(rec.model[rows], minlength=size).astype(np.float64)
    spend = np.bincount(rec.model[rows], weights=rec.cost[rows], minlength=size)
    prices: NDArray[np.float64] = np.divide(
        spend, served, out=np.full(size, np.nan), where=served > 0
    )
    return prices


def model_prices(rec: Records, rows: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Typical price per model over `rows`: mean expected cost as a candidate, else mean cost."""
    cost = candidates(rec, np.flatnonzero(rows)).cost
    counts = np.isfinite(cost).sum(axis=0)
    sums = np.where(np.isfinite(cost), cost, 0.0).sum(axis=0)
    quoted = np.divide(sums, counts, out=np.full(sums.shape, np.nan), where=counts > 0)
    prices: NDArray[np.float64] = np.where(counts > 0, quoted, served_prices(rec, rows))
    return prices


def labelled(rec: Records, rows: NDArray[np.int64]) -> tuple[int, int]:
    """(requests with feedback, accepted) among `rows`."""
    verdict = rec.accepted[rows]
    return int((verdict != NO_FEEDBACK).sum()), int((verdict == ACCEPTED).sum())


def predicted_effect(
    rec: Records, rows: NDArray[np.int64], delta_p: NDArray[np.float64]
) -> tuple[float | None, float | None, float | None]:
    """Mean predicted change over rows with feedback; its interval is the Wilson interval of
    their observed acceptance, shifted by that change (the sampling error of the anchor)."""
    fed = rec.accepted[rows] != NO_FEEDBACK
    n, k = labelled(rec, rows)
    if n == 0:
        return None, None, None
    delta = float(np.nan_to_num(delta_p[fed]).mean())
    low, high = wilson(k, n)
    return delta, low - k / n + delta, high - k / n + delta


def observed_effect(before: tuple[int, int], after: tuple[int, int]) -> tuple[float, float, float]:
    (n1, k1), (n2, k2) = before, after
    return newcombe(k1, n1, k2, n2)


def effect(
    impact: Impact, span: Span, acc: tuple[float | None, float | None, float | None], basis: Basis
) -> Effect:
    delta = float(impact.cost_delta.sum())
    monthly = None if span.monthly_factor is None else delta * span.monthly_factor
    return Effect(int(impact.rows.size), delta, monthly, acc[0], acc[1], acc[2], basis)


def usd(value: float) -> str:
    """Dollars: cents from $1 up, three significant digits below (request costs are tiny)."""
    sign, value = ("-" if value < 0 else ""), abs(value)
    return f"{sign}${value:,.2f}" if value >= 1 else f"{sign}${value:.3g}"


def describe(e: Effect, per: str) -> str:
    """One line: the money per `per` (month, or the records' span) and the acceptance change."""
    dollars = e.monthly_cost_delta_usd if e.monthly_cost_delta_usd is not None else e.cost_delta_usd
    text = f"{'saves' if dollars <= 0 else 'adds'} {usd(abs(dollars))} per {per}"
    text += f" ({usd(abs(e.cost_delta_usd))} over the records, {e.requests_affected:,} requests)"
    if e.acceptance_delta is not None:
        text += f"; acceptance {e.acceptance_delta * 100:+.1f} points"
        if e.acceptance_delta_low is not None and e.acceptance_delta_high is not None:
            low, high = e.acceptance_delta_low * 100, e.acceptance_delta_high * 100
            text += f" (95% {low:+.1f} to {high:+.1f})"
        text += f", {e.acceptance_basis}"
    return text


def union_delta(impacts: list[Impact]) -> float:
    """Sum of per-request deltas where each request counts once, at its largest |delta|."""
    if not impacts:
        return 0.0
    rows = np.concatenate([i.rows for i in impacts])
    deltas = np.concatenate([i.cost_delta for i in impacts])
    order = np.lexsort((-np.abs(deltas), rows))
    rows, deltas = rows[order], deltas[order]
    first = np.ones(rows.size, dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    return float(deltas[first].sum())


def bar_of(rec: Records, rows: NDArray[np.int64]) -> float | None:
    """The route's bar as logged: the one of the latest request that had one."""
    bars = rec.bar[rows]
    known = np.flatnonzero(np.isfinite(bars))
    if known.size == 0:
        return None
    return float(bars[known[np.argmax(rec.time[rows][known])]])
