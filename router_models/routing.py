"""Offline routing evaluation of difficulty scores on a labelled file (no I/O here).

A router is a difficulty per prompt. Models' skills are calibrated on the file from each
model's overall mean score only (one number per model, as an operator would read it off a
leaderboard): s_m solves mean_i sigmoid(a*(s_m - d_i)) = mean score of m.
Strong/weak score = P(strong acceptable) - P(weak acceptable), the expected gain of the
strong call; a raw score (length as RouteLLM uses it) can be evaluated as given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from router_models import metrics
from router_models.data import LabelMatrix, Price, Row, prompt_cost
from router_models.irt import sigmoid

F64 = npt.NDArray[np.float64]
BARS = tuple(round(0.05 * k, 2) for k in range(1, 20))
CLEAR_GAP = 0.10
MIN_COVERAGE = 0.99


def skill_from_mean(d: F64, a: float, mean: float) -> float:
    """The skill whose mean predicted P over these prompts equals `mean` (bisection)."""
    target = min(max(mean, 1e-4), 1 - 1e-4)
    lo, hi = float(d.min()) - 30.0 / a, float(d.max()) + 30.0 / a
    for _ in range(100):
        mid = (lo + hi) / 2.0
        if float(sigmoid(a * (mid - d)).mean()) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def default_pair(labels: LabelMatrix) -> tuple[str, str]:
    """Strongest model on every row, and the best one at least CLEAR_GAP below it."""
    full = [j for j in range(len(labels.models)) if labels.mask[:, j].all()]
    if len(full) < 2:
        raise ValueError("need two models scored on every row for a strong/weak pair")
    means = {j: float(labels.scores[:, j].mean()) for j in full}
    ranked = sorted(full, key=lambda j: (-means[j], labels.models[j]))
    strong = ranked[0]
    lower = [j for j in ranked[1:] if means[strong] - means[j] >= CLEAR_GAP - 1e-12]
    weak = lower[0] if lower else ranked[-1]
    return labels.models[strong], labels.models[weak]


@dataclass(frozen=True, slots=True)
class PairResult:
    apgr: float
    cpt50: float
    cpt80: float
    curve: metrics.PGRCurve


def pair_result(score: F64, strong: F64, weak: F64) -> PairResult:
    curve = metrics.pgr_curve(score, strong, weak)
    return PairResult(
        apgr=metrics.apgr(curve),
        cpt50=metrics.cpt(curve, 0.5),
        cpt80=metrics.cpt(curve, 0.8),
        curve=curve,
    )


def gain_score(d: F64, a: float, labels: LabelMatrix, strong: str, weak: str) -> F64:
    js, jw = labels.models.index(strong), labels.models.index(weak)
    ss = skill_from_mean(d, a, float(labels.scores[:, js].mean()))
    sw = skill_from_mean(d, a, float(labels.scores[:, jw].mean()))
    out: F64 = sigmoid(a * (ss - d)) - sigmoid(a * (sw - d))
    return out


@dataclass(frozen=True, slots=True)
class CostTable:
    """Per-prompt costs and scores of the priced models scored on >= MIN_COVERAGE of rows,
    over the rows where all of them are scored (`used`)."""

    models: tuple[str, ...]
    cost: F64  # (used prompts, models)
    score: F64
    left_out: tuple[str, ...]
    used: npt.NDArray[np.bool_]


def cost_table(rows: Sequence[Row], labels: LabelMatrix, prices: Mapping[str, Price]) -> CostTable:
    kept = [
        m
        for j, m in enumerate(labels.models)
        if m in prices and labels.mask[:, j].mean() >= MIN_COVERAGE
    ]
    left_out = tuple(m for m in labels.models if m not in kept)
    idx = [labels.models.index(m) for m in kept]
    used: npt.NDArray[np.bool_] = np.asarray(
        labels.mask[:, idx].all(axis=1) if idx else np.zeros(len(rows)), dtype=bool
    )
    picked = [r for r, u in zip(rows, used, strict=True) if u]
    cost = np.array([[prompt_cost(r, m, prices) for m in kept] for r in picked], dtype=np.float64)
    cost = cost.reshape(len(picked), len(kept))
    score = labels.scores[used][:, idx]
    return CostTable(tuple(kept), cost, score, left_out, used)


@dataclass(frozen=True, slots=True)
class MultiResult:
    curve: list[metrics.CostPoint]
    aiq: float
    cost_to_match_best: float | None


def multi_result(d: F64, a: float, table: CostTable) -> MultiResult:
    d = d[table.used]
    skills = np.array(
        [skill_from_mean(d, a, float(table.score[:, j].mean())) for j in range(len(table.models))]
    )
    p = sigmoid(a * (skills[None, :] - d[:, None]))
    curve = metrics.cost_quality_curve(p, table.cost, table.score, BARS)
    xs = np.array([c.cost for c in curve])
    ys = np.array([c.quality for c in curve])
    means_c, means_q = table.cost.mean(axis=0), table.score.mean(axis=0)
    best = int(np.argmax(means_q))
    return MultiResult(
        curve=curve,
        aiq=metrics.aiq(xs, ys, float(means_c.min()), float(means_c.max())),
        cost_to_match_best=metrics.cost_to_reach(xs, ys, float(means_q[best])),
    )


def standardise(x: F64) -> F64:
    sd = float(x.std())
    out: F64 = (x - x.mean()) / (sd if sd > 1e-12 else 1.0)
    return out
