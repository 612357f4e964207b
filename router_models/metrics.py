"""Routing metrics, numpy only: RouteLLM's PGR / APGR / CPT and RouterBench's AIQ.

Strong/weak: a router gives each prompt a score (higher = more in need of the strong
model). For each decile edge t of the scores (pandas `qcut(score, 10)` bins), prompts with
score >= t go to the strong model. PGR = (quality - weak) / (strong - weak) against the
share of strong calls; APGR is the trapezoid area under that curve on [0, 1].

Many models: route each prompt to the cheapest model whose P >= bar, for each bar; AIQ is
the mean height of the non-decreasing convex hull of the (cost, quality) points over a
cost range.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class PGRCurve:
    share: F64  # strong-call share, ascending, from 0 to 1
    pgr: F64
    quality: F64
    strong_quality: float
    weak_quality: float


def decile_edges(score: F64, bins: int = 10) -> F64:
    """The bin edges pandas.qcut(score, bins, duplicates='drop') would use."""
    edges: F64 = np.unique(np.quantile(score, np.linspace(0.0, 1.0, bins + 1)))
    return edges


def pgr_curve(score: F64, strong: F64, weak: F64, bins: int = 10) -> PGRCurve:
    """PGR at each decile threshold, plus the all-weak (0) and all-strong (1) ends."""
    q_strong, q_weak = float(strong.mean()), float(weak.mean())
    gap = q_strong - q_weak
    if abs(gap) < 1e-12:
        raise ValueError("strong and weak models have the same mean quality; PGR is undefined")
    points: dict[float, float] = {0.0: q_weak, 1.0: q_strong}
    for t in decile_edges(score, bins):
        to_strong = score >= t
        share = float(to_strong.mean())
        points[share] = float(np.where(to_strong, strong, weak).mean())
    shares = np.array(sorted(points))
    quality = np.array([points[s] for s in sorted(points)])
    return PGRCurve(shares, (quality - q_weak) / gap, quality, q_strong, q_weak)


def apgr(curve: PGRCurve) -> float:
    """Area under PGR against strong-call share (trapezoid)."""
    heights = (curve.pgr[1:] + curve.pgr[:-1]) / 2.0
    return float((heights * np.diff(curve.share)).sum())


def cpt(curve: PGRCurve, target: float) -> float:
    """Smallest strong-call share at which the monotone PGR curve reaches `target`."""
    pgr = np.maximum.accumulate(curve.pgr)
    hit = np.nonzero(pgr >= target - 1e-12)[0]
    if hit.size == 0:
        return 1.0
    k = int(hit[0])
    if k == 0:
        return float(curve.share[0])
    x0, x1, y0, y1 = curve.share[k - 1], curve.share[k], pgr[k - 1], pgr[k]
    return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0)) if y1 > y0 else float(x1)


@dataclass(frozen=True, slots=True)
class CostPoint:
    bar: float
    cost: float  # mean cost per prompt
    quality: float  # mean score of the chosen models


def route_by_bar(p: F64, cost: F64, bar: float) -> npt.NDArray[np.int64]:
    """Per prompt, the cheapest model with P >= bar, else the model with the highest P.

    p, cost: (prompts, models). Ties in cost go to the higher P.
    """
    ok = p >= bar
    masked = np.where(ok, cost, np.inf)
    order = np.lexsort((-p, masked), axis=-1)[:, 0] if p.ndim == 2 else np.zeros(0, np.int64)
    best_p = np.argmax(p, axis=1)
    choice: npt.NDArray[np.int64] = np.where(ok.any(axis=1), order, best_p).astype(np.int64)
    return choice


# The quality bars a many-model router is swept over (one routing policy per bar)
BARS = tuple(round(0.05 * k, 2) for k in range(1, 20))


def cost_quality_curve(p: F64, cost: F64, score: F64, bars: Sequence[float]) -> list[CostPoint]:
    rows = np.arange(p.shape[0])
    out = []
    for bar in bars:
        choice = route_by_bar(p, cost, bar)
        out.append(
            CostPoint(
                bar=float(bar),
                cost=float(cost[rows, choice].mean()),
                quality=float(score[rows, choice].mean()),
            )
        )
    return out


def upper_hull(cost: F64, quality: F64) -> tuple[F64, F64]:
    """Non-decreasing upper convex hull of (cost, quality) points, ascending in cost."""
    order = np.lexsort((-quality, cost))
    hull: list[tuple[float, float]] = []
    best = -np.inf
    for c, q in zip(cost[order], quality[order], strict=True):
        if q <= best:
            continue  # dominated: costs at least as much for no more quality
        best = float(q)
        while len(hull) >= 2:
            (c1, q1), (c2, q2) = hull[-2], hull[-1]
            if (q2 - q1) * (c - c1) <= (q - q1) * (c2 - c1):
                hull.pop()  # the middle point lies on or below the chord
            else:
                break
        hull.append((float(c), float(q)))
    xs = np.array([h[0] for h in hull])
    ys = np.array([h[1] for h in hull])
    return xs, ys


def hull_quality_at(xs: F64, ys: F64, c: F64) -> F64:
    """Quality the hull reaches at cost c: flat before its first and after its last point."""
    out: F64 = np.interp(c, xs, ys)
    return out


def aiq(cost: F64, quality: F64, lo: float, hi: float, grid: int = 2001) -> float:
    """RouterBench AIQ: mean of the non-decreasing convex hull over [lo, hi]."""
    xs, ys = upper_hull(cost, quality)
    if hi <= lo:
        return float(hull_quality_at(xs, ys, np.array([lo]))[0])
    c = np.linspace(lo, hi, grid)
    q = hull_quality_at(xs, ys, c)
    return float(((q[1:] + q[:-1]) / 2.0 * np.diff(c)).sum() / (hi - lo))


def cost_to_reach(cost: F64, quality: F64, target: float) -> float | None:
    """Least cost on the hull (mixing neighbouring policies) whose quality reaches target."""
    xs, ys = upper_hull(cost, quality)
    hit = np.nonzero(ys >= target - 1e-12)[0]
    if hit.size == 0:
        return None
    k = int(hit[0])
    if k == 0:
        return float(xs[0])
    return float(xs[k - 1] + (target - ys[k - 1]) * (xs[k] - xs[k - 1]) / (ys[k] - ys[k - 1]))


def cost_share_to_match_best(
    p: F64, cost: F64, score: F64, bars: Sequence[float] = BARS
) -> float | None:
    """The many-model figure: the least mean cost (on the hull of the bar sweep) at which
    routing by ``p`` reaches the quality of the best single model, as a share of that model's
    mean cost; None when no mix of the bars reaches it. p, cost, score: (prompts, models)."""
    mc, mq = cost.mean(axis=0), score.mean(axis=0)
    best = int(np.argmax(mq))
    curve = cost_quality_curve(p, cost, score, bars)
    xs = np.array([c.cost for c in curve])
    qs = np.array([c.quality for c in curve])
    hit = cost_to_reach(xs, qs, float(mq[best]))
    return None if hit is None else hit / float(mc[best])


def brier(p: F64, y: F64) -> float:
    return float(((p - y) ** 2).mean())


def reliability(p: F64, y: F64, bins: int = 10) -> list[dict[str, float]]:
    """Per probability bin: count, mean predicted P, mean observed label."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    table = []
    for b in range(bins):
        sel = idx == b
        if sel.any():
            table.append(
                {
                    "lo": float(edges[b]),
                    "hi": float(edges[b + 1]),
                    "n": int(sel.sum()),
                    "predicted": float(p[sel].mean()),
                    "observed": float(y[sel].mean()),
                }
            )
    return table
