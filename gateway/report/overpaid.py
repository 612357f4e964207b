"""Where quality is overpaid by a decision (a) or by a pin on a task (b).

(a) A request served by a model dearer than a candidate of the same decision that was eligible
    and predicted to clear the logged bar: a rule forcing a strong model, or a fallback.
(b) A task pinned by a rule to a dear model while the same task served by a cheaper model was
    accepted at a similar rate: the gap is within `similar_within`, or it is not significant
    and within `max_hidden_gap`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from gateway.report.analysis import Span, label
from gateway.report.data import Records
from gateway.report.findings import (
    Finding,
    FindingSettings,
    Found,
    Impact,
    candidates,
    code,
    effect,
    labelled,
    observed_effect,
    predicted_effect,
    repick,
    served_prices,
    switch,
)
from gateway.report.policy import PolicyHints, pin_task, retries_change, unpin
from gateway.report.stats import two_proportion_p

FALLBACK, OTHER = -2, -3


@dataclass(frozen=True, slots=True)
class Excess:
    """Spend above the cheapest candidate predicted to clear the bar, by cause (any size)."""

    route: str | None
    cause: str  # "fallback", "rule <name>", or the decision reason
    model: str
    alternative: str
    requests: int
    excess_usd: float


@dataclass(frozen=True, slots=True)
class _Overpaid:
    """The requests of one (route, cause, served model) group of (a)."""

    route: int
    cause: int  # a rule code, FALLBACK or OTHER
    model: int
    alternative: int
    rows: NDArray[np.int64]
    impact: Impact
    delta_p: NDArray[np.float64]
    alt_p: float


def decision_overpay(
    rec: Records, span: Span, cfg: FindingSettings, hints: PolicyHints
) -> tuple[list[Found], list[Excess]]:
    """(a): per request, the cheapest usable candidate with p >= the logged bar vs the served."""
    has_cands = np.diff(rec.cand_offsets) > 0
    explicit = code(rec.reasons, "explicit_model")
    served = rec.model >= 0
    rows = np.flatnonzero(np.isfinite(rec.bar) & has_cands & served & (rec.reason != explicit))
    cands = candidates(rec, rows)
    alt = repick(cands, rec.bar[rows])
    k = np.arange(rows.size)
    c_alt, c_served = cands.cost[k, np.maximum(alt, 0)], cands.cost[k, rec.model[rows]]
    sw = switch(rec, cands, alt)
    over = sw.valid & (sw.p_new >= rec.bar[rows] - 1e-9) & (c_alt < c_served * (1 - 1e-9))
    pinned = rec.reason[rows] == code(rec.reasons, "pinned_by_rule")
    cause = np.where(rec.fallback[rows], FALLBACK, np.where(pinned, rec.rule[rows], OTHER))
    keys = np.stack([rec.route[rows], cause, rec.model[rows]], axis=1)[over]
    delta, dp, p_alt = (
        (sw.cost - rec.cost[rows])[over],
        (sw.p_new - sw.p_served)[over],
        sw.p_new[over],
    )
    groups = []
    for key in np.unique(keys, axis=0):
        sel = np.all(keys == key, axis=1)
        route, why, model = (int(v) for v in key)
        idx = rows[over][sel]
        alternative = int(np.bincount(alt[over][sel]).argmax())
        impact = Impact(idx, delta[sel])
        groups.append(
            _Overpaid(
                route, why, model, alternative, idx, impact, dp[sel], float(p_alt[sel].mean())
            )
        )
    excess = [_excess(rec, g) for g in groups]
    found: list[Found] = []
    for g in groups:
        if g.rows.size < cfg.min_samples or g.route < 0:
            continue
        if g.cause == FALLBACK:
            found.append(_fallback(rec, span, g, hints))
        elif g.cause >= 0:
            found.append(_pinned(rec, span, g, hints))
    return found, excess


def _excess(rec: Records, g: _Overpaid) -> Excess:
    if g.cause == FALLBACK:
        cause = "fallback"
    elif g.cause >= 0:
        cause = f"rule {rec.rules[g.cause]}"
    else:
        cause = label(rec.reasons, int(rec.reason[g.rows[0]])) or "unknown"
    return Excess(
        route=label(rec.routes, g.route),
        cause=cause,
        model=rec.models[g.model],
        alternative=rec.models[g.alternative],
        requests=int(g.rows.size),
        excess_usd=float(-g.impact.cost_delta.sum()),
    )


def _pinned(rec: Records, span: Span, g: _Overpaid, hints: PolicyHints) -> Found:
    route, model, alt = rec.routes[g.route], rec.models[g.model], rec.models[g.alternative]
    rule = rec.rules[g.cause]
    bar = hints.bars.get(route, float(np.median(rec.bar[g.rows])))
    rule_rows = int(((rec.route == g.route) & (rec.rule == g.cause)).sum())
    n, k = labelled(rec, g.rows)
    finding = Finding(
        kind="overpaid_decision",
        title=f"Rule {rule} in route {route} sends requests to {model} although {alt} "
        "was predicted to clear the bar",
        route=route,
        model=model,
        task=None,
        rule=rule,
        evidence=(
            ("requests where a cheaper candidate cleared the bar", int(g.rows.size)),
            ("share of the rule's requests", g.rows.size / rule_rows),
            ("cheaper candidate", alt),
            ("its mean predicted p", g.alt_p),
            ("route quality bar", bar),
            (f"observed acceptance on {model}", k / n if n else None),
            ("spend above the cheaper candidate (USD)", float(-g.impact.cost_delta.sum())),
        ),
        policy_change=unpin(route, rule, model, bar, hints),
        effect=effect(g.impact, span, predicted_effect(rec, g.rows, g.delta_p), "predicted"),
    )
    return finding, g.impact


def _fallback(rec: Records, span: Span, g: _Overpaid, hints: PolicyHints) -> Found:
    """Retrying the cheap model saves the excess times its success rate in the route."""
    route, model, alt = rec.routes[g.route], rec.models[g.model], rec.models[g.alternative]
    alt_rows = (rec.route == g.route) & (rec.model == g.alternative)
    success = float((alt_rows & ~rec.failed).sum()) / float(alt_rows.sum() + g.rows.size)
    scaled = Impact(g.rows, g.impact.cost_delta * success)
    finding = Finding(
        kind="overpaid_decision",
        title=f"Fallbacks in route {route} send to {model} requests that {alt} was predicted "
        "to clear the bar on",
        route=route,
        model=model,
        task=None,
        rule=None,
        evidence=(
            ("fallback requests served by the dearer model", int(g.rows.size)),
            ("cheaper candidate that failed first", alt),
            (f"{alt} success rate in the route", success),
            ("spend above the cheaper candidate (USD)", float(-g.impact.cost_delta.sum())),
            ("most attempts logged on one request", int(rec.attempts[g.rows].max())),
        ),
        policy_change=retries_change(alt, hints.max_retries.get(alt)),
        effect=effect(scaled, span, predicted_effect(rec, g.rows, g.delta_p), "predicted"),
    )
    return finding, scaled


@dataclass(frozen=True, slots=True)
class _Pin:
    """One (route, rule, task, served model) group of (b)."""

    route: int
    rule: int
    task: int
    model: int
    rows: NDArray[np.int64]


def pin_overpay(rec: Records, span: Span, cfg: FindingSettings) -> list[Found]:
    """(b): for each task a rule sends to a dear model, the cheapest model that served the same
    task without that rule (another period, route or rule) at a similar acceptance."""
    ruled = (rec.rule >= 0) & (rec.task >= 0) & (rec.route >= 0) & (rec.model >= 0)
    ruled &= ~rec.fallback
    cols = np.stack([rec.route, rec.rule, rec.task, rec.model], axis=1)
    found: list[Found] = []
    for key in np.unique(cols[ruled], axis=0):
        route, rule, task, model = (int(v) for v in key)
        pin = _Pin(route, rule, task, model, np.flatnonzero(ruled & np.all(cols == key, axis=1)))
        before = labelled(rec, pin.rows)
        if before[0] < cfg.min_samples:
            continue
        same_task = (rec.task == task) & (rec.model >= 0)
        elsewhere = same_task & ~((rec.route == route) & (rec.rule == rule))
        price = served_prices(rec, same_task)
        for cheap in np.argsort(np.where(np.isnan(price), np.inf, price)):
            if not price[cheap] < price[model]:
                break
            after = labelled(rec, np.flatnonzero(elsewhere & (rec.model == cheap)))
            if after[0] < cfg.min_samples:
                continue
            diff, low, high = observed_effect(before, after)
            p_value = two_proportion_p(before[1], before[0], after[1], after[0])
            hidden = p_value >= cfg.alpha and diff >= -cfg.max_hidden_gap
            if diff >= -cfg.similar_within or hidden:
                compared = (before, after, (diff, low, high), p_value)
                found.append(_pin_finding(rec, span, pin, int(cheap), price, compared))
                break
    return found


def _pin_finding(
    rec: Records,
    span: Span,
    pin: _Pin,
    cheap: int,
    price: NDArray[np.float64],
    compared: tuple[tuple[int, int], tuple[int, int], tuple[float, float, float], float],
) -> Found:
    """Cost of moving the rule's requests: decision prices where the decision listed the cheap
    model, else the task's observed price ratio."""
    (n_a, k_a), (n_b, k_b), acc, p_value = compared
    sw = switch(rec, candidates(rec, pin.rows), np.full(pin.rows.size, cheap))
    ratio = price[cheap] / price[pin.model] if price[pin.model] > 0 else 1.0
    actual = rec.cost[pin.rows]
    impact = Impact(pin.rows, np.where(sw.valid, sw.cost, actual * ratio) - actual)
    route, task = rec.routes[pin.route], rec.tasks[pin.task]
    dear, model, rule = rec.models[pin.model], rec.models[cheap], rec.rules[pin.rule]
    finding = Finding(
        kind="overpaid_pin",
        title=f"Rule {rule} sends task {task} to {dear} in route {route}, yet {model} served "
        "the task at a similar acceptance",
        route=route,
        model=dear,
        task=task,
        rule=rule,
        evidence=(
            (f"requests the rule sent to {dear}", int(pin.rows.size)),
            (f"their acceptance on {dear}", k_a / n_a),
            (f"requests with feedback on {dear}", n_a),
            (f"acceptance of {model} on the task, without the rule", k_b / n_b),
            (f"requests with feedback on {model}", n_b),
            (f"difference ({model} - {dear})", acc[0]),
            ("p-value (two-proportion z-test)", p_value),
            (f"cost per request on {dear} (USD)", float(price[pin.model])),
            (f"cost per request on {model} (USD)", float(price[cheap])),
        ),
        policy_change=pin_task(route, task, model, rule),
        effect=effect(impact, span, acc, "observed"),
    )
    return finding, impact
