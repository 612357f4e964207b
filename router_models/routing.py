"""Offline routing evaluation of difficulty scores on a labelled file (no I/O here).

A router is a difficulty per prompt. Models' skills are calibrated on the file from each
model's overall mean score only (one number per model, as an operator would read it off a
leaderboard): s_m solves mean_i P(a, s_m, d_i) = mean score of m (`irt.irt_p`).
Strong/weak: the default score is the raw difficulty (higher = send to the strong model);
P(strong acceptable) - P(weak acceptable), the expected gain of the strong call, is
reported beside it. Length is evaluated raw, as RouteLLM uses it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from router_models import metrics
from router_models.data import LabelMatrix, Price, Row, prompt_cost
from router_models.irt import irt_p

F64 = npt.NDArray[np.float64]
PAIR_GAP = 0.15
MIN_COVERAGE = 0.99
# where fewer than two models are scored on MIN_COVERAGE of the rows (a file whose models
# each label a part of them), models scored on this share of the rows take part instead;
# the many-model table also keeps at least this share of the rows (`shared_rows_models`)
FALLBACK_COVERAGE = 0.5
MIN_PAIR_ROWS = 10  # a pair's two models are both scored on at least this many rows


def coverage_floor(coverage: Sequence[float] | F64) -> float:
    """The share of rows a model must be scored on to take part in the pair and the
    many-model table: MIN_COVERAGE where at least two models (of ``coverage``, each model's
    share) reach it, else FALLBACK_COVERAGE."""
    reach = sum(1 for c in coverage if c >= MIN_COVERAGE - 1e-12)
    return MIN_COVERAGE if reach >= 2 else FALLBACK_COVERAGE


def skill_from_mean(d: F64, a: float | F64, mean: float) -> float:
    """The skill whose mean predicted P over these prompts equals `mean` (bisection); `a`
    is one discrimination, or one per prompt (a 2PL model)."""
    target = min(max(mean, 1e-4), 1 - 1e-4)
    reach = 30.0 / float(np.min(a))
    lo, hi = float(d.min()) - reach, float(d.max()) + reach
    for _ in range(100):
        mid = (lo + hi) / 2.0
        if float(irt_p(a, mid, d).mean()) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def _means(labels: LabelMatrix) -> dict[str, float]:
    """Mean score of every model scored on enough of the rows (`coverage_floor`), on its
    own rows."""
    coverage = labels.mask.mean(axis=0) if labels.mask.size else np.zeros(len(labels.models))
    floor = coverage_floor(coverage)
    out = {}
    for j, m in enumerate(labels.models):
        seen = labels.mask[:, j]
        if coverage[j] >= floor - 1e-12:
            out[m] = float(labels.scores[seen, j].mean())
    return out


def default_pair(labels: LabelMatrix, prices: Mapping[str, Price]) -> tuple[str, str]:
    """RouteLLM-style pair, by rule and never by router results.

    Strong: the best-mean model among those scored on enough rows (>= MIN_COVERAGE, or
    FALLBACK_COVERAGE where fewer than two models reach it: `coverage_floor`). Weak: the
    cheapest priced one (input + output USD per Mtok; ties to the higher mean) whose mean
    is at least PAIR_GAP below; if none is priced, the best one at least PAIR_GAP below;
    if none is that far below, the weakest. Only models scored with the strong one on at
    least MIN_PAIR_ROWS rows can be its weak model.
    """
    means = _means(labels)
    if len(means) < 2:
        raise ValueError(f"need two models scored on >= {FALLBACK_COVERAGE:.0%} of rows for a pair")
    strong = min(means, key=lambda m: (-means[m], m))
    means = {m: v for m, v in means.items() if m == strong or _shared(labels, strong, m)}
    if len(means) < 2:
        raise ValueError(f"no model shares {MIN_PAIR_ROWS} scored rows with {strong!r}")
    below = [m for m in means if means[strong] - means[m] >= PAIR_GAP - 1e-12]
    priced = [m for m in below if m in prices]
    if priced:

        def price(m: str) -> tuple[float, float, str]:
            p = prices[m]
            return (p.input_usd_per_mtok + p.output_usd_per_mtok, -means[m], m)

        return strong, min(priced, key=price)
    if below:
        return strong, min(below, key=lambda m: (-means[m], m))
    return strong, min(means, key=lambda m: (means[m], m))


def pair_candidates(
    labels: LabelMatrix, strong: str, prices: Mapping[str, Price], limit: int = 8
) -> list[str]:
    """Weak partners for the pair table: every priced covered model >= 0.05 below
    `strong` and scored with it on MIN_PAIR_ROWS rows; if none is priced, at most `limit`
    spread evenly over the mean-score range."""
    means = _means(labels)
    below = sorted(
        (
            m
            for m in means
            if means.get(strong, 0.0) - means[m] >= 0.05 - 1e-12 and _shared(labels, strong, m)
        ),
        key=lambda m: (-means[m], m),
    )
    priced = [m for m in below if m in prices]
    if priced:
        return priced
    if len(below) <= limit:
        return below
    picks = np.unique(np.round(np.linspace(0, len(below) - 1, limit)).astype(np.int64))
    return [below[int(k)] for k in picks]


def _shared(labels: LabelMatrix, a: str, b: str) -> bool:
    return int(both_scored(labels, a, b).sum()) >= MIN_PAIR_ROWS


def both_scored(labels: LabelMatrix, strong: str, weak: str) -> npt.NDArray[np.bool_]:
    js, jw = labels.models.index(strong), labels.models.index(weak)
    out: npt.NDArray[np.bool_] = labels.mask[:, js] & labels.mask[:, jw]
    return out


def pair_rows(
    labels: LabelMatrix, strong: str, weak: str
) -> tuple[npt.NDArray[np.bool_], LabelMatrix, F64, F64]:
    """The rows where both models are scored: their mask, the label matrix on them, and the
    strong and weak model's labels there."""
    sel = both_scored(labels, strong, weak)
    sub = LabelMatrix(labels.models, labels.scores[sel], labels.mask[sel])
    ys = sub.scores[:, sub.models.index(strong)]
    yw = sub.scores[:, sub.models.index(weak)]
    return sel, sub, ys, yw


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
    out: F64 = irt_p(a, ss, d) - irt_p(a, sw, d)
    return out


@dataclass(frozen=True, slots=True)
class CostTable:
    """Per-prompt costs and scores of the priced models scored on enough rows
    (`coverage_floor` over the priced models), over the rows where all of them are scored
    (`used`)."""

    models: tuple[str, ...]
    cost: F64  # (used prompts, models)
    score: F64
    left_out: tuple[str, ...]
    used: npt.NDArray[np.bool_]


def shared_rows_models(mask: npt.NDArray[np.bool_], cols: Sequence[int], share: float) -> list[int]:
    """The columns of ``cols`` kept for a table of the rows they all score. Where fewer than
    ``share`` of the rows are scored by all of them (models that each miss a different part
    of the rows), the column whose removal adds the most such rows is dropped (ties: the
    less covered, then the later one), and the next, until ``share`` is reached; where it
    never is (down to two), the largest set that reached the most complete rows is kept (a
    judged sample that every model scores, beside rows that one model each scores, keeps
    every model on that sample)."""
    kept = list(cols)
    n = mask.shape[0]
    if n == 0:
        return kept
    need = share * n - 1e-9
    coverage = mask.sum(axis=0)
    best, best_rows = list(kept), -1
    while True:
        missing = ~mask[:, kept]
        miss_count = missing.sum(axis=1)
        rows = int((miss_count == 0).sum())
        if rows >= need:
            return kept
        if rows > best_rows:
            best, best_rows = list(kept), rows
        if len(kept) <= 2:
            return best
        only = missing[miss_count == 1]
        gain = only.sum(axis=0)  # rows that dropping each kept column would complete
        order = sorted(range(len(kept)), key=lambda k: (-int(gain[k]), int(coverage[kept[k]]), -k))
        del kept[order[0]]


def cost_table(rows: Sequence[Row], labels: LabelMatrix, prices: Mapping[str, Price]) -> CostTable:
    coverage = labels.mask.mean(axis=0) if len(rows) else np.zeros(len(labels.models))
    priced = [j for j, m in enumerate(labels.models) if m in prices]
    floor = coverage_floor([coverage[j] for j in priced])
    idx = shared_rows_models(
        labels.mask, [j for j in priced if coverage[j] >= floor - 1e-12], FALLBACK_COVERAGE
    )
    kept = [labels.models[j] for j in idx]
    left_out = tuple(m for m in labels.models if m not in kept)
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
    """The many-model result of routing by the IRT P of difficulty ``d`` (every row), each
    model's skill fitted to its mean score on the table's rows."""
    d = d[table.used]
    skills = np.array(
        [skill_from_mean(d, a, float(table.score[:, j].mean())) for j in range(len(table.models))]
    )
    return multi_result_p(irt_p(a, skills[None, :], d[:, None]), table)


def multi_result_p(p: F64, table: CostTable) -> MultiResult:
    """The many-model result of routing by ``p`` ((table rows, table models) P)."""
    curve = metrics.cost_quality_curve(p, table.cost, table.score, metrics.BARS)
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
