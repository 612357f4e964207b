"""Findings about a route's quality bar: (c) a bar that can drop, (d) quality that is underpaid.

(c) Overpaid by bar: the route's acceptance, at its 95% lower bound, clears the bar and beats the
    mean predicted p by `calibration_margin`. Predictions are underconfident, so the bar drops by
    that gap (rounded up to whole points), then rises again point by point until the projected
    acceptance, lower bound, still clears the old bar.
(d) Underpaid: a model that is not the route's dearest, accepted significantly below the bar
    (Wilson upper bound < bar) and by at least `material_gap`. Per task: pin the task to the
    cheapest dearer model that clears the bar on it. What is left per model: raise the bar by the
    model's calibration gap (mean predicted p - acceptance).
Both re-pick every bar-routed request of the route under the new bar and count only requests
whose pick changes, against the pick under the old bar.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from gateway.report.analysis import Span
from gateway.report.data import NO_FEEDBACK, Records
from gateway.report.findings import (
    BY_BAR,
    Basis,
    Candidates,
    Finding,
    FindingSettings,
    Found,
    Impact,
    Switch,
    bar_of,
    candidates,
    code,
    effect,
    labelled,
    model_prices,
    observed_effect,
    predicted_effect,
    repick,
    switch,
)
from gateway.report.policy import PolicyHints, bar_change, pin_task
from gateway.report.stats import round_up, wilson


def by_bar_rows(
    rec: Records, route: int, exclude: NDArray[np.bool_] | None = None
) -> NDArray[np.int64]:
    """Requests of `route` decided by the route's own bar (no rule matched, no fallback), with
    candidates to re-pick from."""
    reasons = [code(rec.reasons, r) for r in BY_BAR]
    mask = (rec.route == route) & np.isin(rec.reason, reasons) & ~rec.fallback & (rec.rule < 0)
    mask &= rec.model >= 0
    mask &= np.diff(rec.cand_offsets) > 0
    if exclude is not None:
        mask &= ~exclude
    return np.flatnonzero(mask)


def route_bar(rec: Records, route: int, hints: PolicyHints) -> float | None:
    """The route's bar: from the policy file when given, else as its latest request logged it."""
    name = rec.routes[route]
    return hints.bars[name] if name in hints.bars else bar_of(rec, by_bar_rows(rec, route))


def _moves(
    rec: Records, cands: Candidates, old: float, new: float
) -> tuple[Switch, NDArray[np.bool_]]:
    """The switch to picks under `new`, and which rows change against the picks under `old`."""
    before, after = repick(cands, old), repick(cands, new)
    sw = switch(rec, cands, after)
    return sw, sw.valid & (after != before)


def bar_overpay(rec: Records, span: Span, cfg: FindingSettings, hints: PolicyHints) -> list[Found]:
    found: list[Found] = []
    for route in range(len(rec.routes)):
        rows = by_bar_rows(rec, route)
        bar = route_bar(rec, route, hints)
        n, k = labelled(rec, rows)
        if bar is None or n < cfg.min_samples:
            continue
        fed = (rec.accepted[rows] != NO_FEEDBACK) & np.isfinite(rec.p[rows])
        mean_p = float(rec.p[rows][fed].mean())
        low, high = wilson(k, n)
        gap = low - mean_p
        if low < bar or gap < cfg.calibration_margin:
            continue
        new_bar = round_up(bar - gap)
        cands = candidates(rec, rows)
        while new_bar < bar:
            sw, moved = _moves(rec, cands, bar, new_bar)
            acc = predicted_effect(rec, rows, np.where(moved, sw.p_new - sw.p_served, 0.0))
            if acc[1] is not None and k / n + acc[1] >= bar:
                break
            new_bar = round(new_bar + 0.01, 2)
        else:
            continue
        impact = Impact(rows[moved], (sw.cost - rec.cost[rows])[moved])
        if impact.cost_delta.sum() >= 0:
            continue
        name = rec.routes[route]
        finding = Finding(
            kind="overpaid_bar",
            title=f"Route {name} is accepted well above its quality bar: the bar can drop "
            f"from {bar:.2f} to {new_bar:.2f}",
            route=name,
            model=None,
            task=None,
            rule=None,
            evidence=(
                ("requests routed by the bar", int(rows.size)),
                ("requests with feedback", n),
                ("acceptance", k / n),
                ("acceptance 95% low", low),
                ("mean predicted p", mean_p),
                ("quality bar", bar),
                ("proposed bar", new_bar),
                ("requests that move to a cheaper model", int(moved.sum())),
                ("projected acceptance", k / n + (acc[0] or 0.0)),
            ),
            policy_change=bar_change(name, bar, new_bar),
            effect=effect(impact, span, acc, "predicted"),
        )
        found.append((finding, impact))
    return found


def underpaid(rec: Records, span: Span, cfg: FindingSettings, hints: PolicyHints) -> list[Found]:
    found: list[Found] = []
    for route in range(len(rec.routes)):
        in_route = (rec.route == route) & (rec.model >= 0)
        prices = model_prices(rec, in_route)
        top = np.nanmax(prices) if np.isfinite(prices).any() else np.nan
        cheap = [int(m) for m in np.unique(rec.model[in_route]) if prices[m] < top]
        pinned_tasks = np.zeros(rec.n, dtype=bool)
        for m in cheap:
            for task in np.unique(rec.task[in_route & (rec.model == m) & (rec.task >= 0)]):
                rows = np.flatnonzero(in_route & (rec.model == m) & (rec.task == task))
                bar = bar_of(rec, rows)
                bar = route_bar(rec, route, hints) if bar is None else bar
                if bar is not None and _low(rec, rows, bar, cfg):
                    key = (route, m, int(task))
                    found.append(_pin_task(rec, span, cfg, rows, key, bar, prices))
                    pinned_tasks |= rec.task == task
        bar = route_bar(rec, route, hints)
        for m in cheap:
            rows = np.flatnonzero(in_route & (rec.model == m) & ~pinned_tasks & (rec.rule < 0))
            if bar is not None and _low(rec, rows, bar, cfg):
                raised = _raise_bar(rec, span, rows, (route, m), bar, pinned_tasks)
                if raised is not None:
                    found.append(raised)
    return found


def _low(rec: Records, rows: NDArray[np.int64], bar: float, cfg: FindingSettings) -> bool:
    n, k = labelled(rec, rows)
    if n < cfg.min_samples:
        return False
    return wilson(k, n)[1] < bar and bar - k / n >= cfg.material_gap


def _overconfidence(rec: Records, rows: NDArray[np.int64]) -> float:
    """Mean predicted p - acceptance over rows with feedback and a p (0 when there are none)."""
    fed = rows[(rec.accepted[rows] != NO_FEEDBACK) & np.isfinite(rec.p[rows])]
    if fed.size == 0:
        return 0.0
    return float(rec.p[fed].mean() - (rec.accepted[fed] == 1).mean())


def _pin_task(
    rec: Records,
    span: Span,
    cfg: FindingSettings,
    rows: NDArray[np.int64],
    key: tuple[int, int, int],
    bar: float,
    prices: NDArray[np.float64],
) -> Found:
    """Pin the task to the cheapest dearer model whose acceptance on it clears the bar (the
    dearest model when none has enough feedback on the task)."""
    route, model, task = key
    dearer = [int(s) for s in np.argsort(prices) if prices[s] > prices[model]]
    target, target_fb = dearer[-1], (0, 0)
    for s in dearer:
        fb = labelled(rec, np.flatnonzero((rec.task == task) & (rec.model == s)))
        if fb[0] >= cfg.min_samples and fb[1] / fb[0] >= bar:
            target, target_fb = s, fb
            break
    sw = switch(rec, candidates(rec, rows), np.full(rows.size, target))
    actual = rec.cost[rows]
    impact = Impact(
        rows, np.where(sw.valid, sw.cost, actual * prices[target] / prices[model]) - actual
    )
    n, k = labelled(rec, rows)
    acc: tuple[float | None, float | None, float | None]
    basis: Basis
    if target_fb[0]:
        acc, basis = observed_effect((n, k), target_fb), "observed"
    else:
        gap = _overconfidence(rec, rows)
        acc, basis = predicted_effect(rec, rows, sw.p_new - (sw.p_served - gap)), "predicted"
    pinned = rows[rec.reason[rows] == code(rec.reasons, "pinned_by_rule")]
    rules = rec.rule[pinned][rec.rule[pinned] >= 0]
    replaces = rec.rules[int(np.bincount(rules).argmax())] if rules.size else None
    names = (rec.routes[route], rec.models[model], rec.tasks[task], rec.models[target])
    finding = Finding(
        kind="underpaid",
        title=f"Task {names[2]} on {names[1]} in route {names[0]} is accepted below the "
        f"bar: pin it to {names[3]}",
        route=names[0],
        model=names[1],
        task=names[2],
        rule=replaces,
        evidence=(
            ("requests", int(rows.size)),
            ("requests with feedback", n),
            ("acceptance", k / n),
            ("acceptance 95% high", wilson(k, n)[1]),
            ("quality bar", bar),
            (
                f"acceptance of {names[3]} on the task",
                target_fb[1] / target_fb[0] if target_fb[0] else None,
            ),
            (f"cost per request on {names[1]} (USD)", float(actual.mean())),
        ),
        policy_change=pin_task(names[0], names[2], names[3], replaces),
        effect=effect(impact, span, acc, basis),
    )
    return finding, impact


def _raise_bar(
    rec: Records,
    span: Span,
    rows: NDArray[np.int64],
    key: tuple[int, int],
    bar: float,
    exclude: NDArray[np.bool_],
) -> Found | None:
    """Raise the bar by the model's overconfidence, then back off to the lowest bar that moves
    the same of the model's requests; None when that moves no request."""
    route, model = key
    gap = _overconfidence(rec, rows)
    corrected = min(0.99, round_up(bar + max(gap, 0.01)))
    routed = by_bar_rows(rec, route, exclude)
    cands = candidates(rec, routed)
    mine = rec.model[routed] == model
    goal = repick(cands, corrected)[mine]
    new_bar = round(bar + 0.01, 2)
    while new_bar < corrected and not np.array_equal(repick(cands, new_bar)[mine], goal):
        new_bar = round(new_bar + 0.01, 2)
    sw, moved = _moves(rec, cands, bar, new_bar)
    if not moved.any():
        return None
    impact = Impact(routed[moved], (sw.cost - rec.cost[routed])[moved])
    mine = rec.model[routed] == model
    delta_p = np.where(moved, sw.p_new - (sw.p_served - np.where(mine, gap, 0.0)), 0.0)
    acc = predicted_effect(rec, routed[mine], delta_p[mine])
    n, k = labelled(rec, rows)
    name, model_name = rec.routes[route], rec.models[model]
    finding = Finding(
        kind="underpaid",
        title=f"{model_name} in route {name} is accepted below the bar: raise the bar "
        f"from {bar:.2f} to {new_bar:.2f}",
        route=name,
        model=model_name,
        task=None,
        rule=None,
        evidence=(
            ("requests", int(rows.size)),
            ("requests with feedback", n),
            ("acceptance", k / n),
            ("acceptance 95% high", wilson(k, n)[1]),
            ("quality bar", bar),
            ("mean predicted p - acceptance", gap),
            ("proposed bar", new_bar),
            (f"requests that move off {model_name}", int((moved & mine).sum())),
            ("requests that move in the route", int(moved.sum())),
        ),
        policy_change=bar_change(name, bar, new_bar),
        effect=effect(impact, span, acc, "predicted"),
    )
    return finding, impact
