"""The held-out comparison `effgate train` runs before it writes an artifact.

`compare(examples, fit, base)` splits the examples into grouped folds (by `Example.group`;
per example when there are fewer than `folds` groups), fits a new scorer on each fold's
complement, and scores the fold with it, with the base scorer, with prompt length and with
a random score. A Scorer maps examples -> {model: P(acceptable) array}.

Reported (JSON-safe): APGR of P(strong) - P(weak) for every ordered model pair (the
better-mean model as strong) with at least `min_pair` examples labelling both and a mean
gap of at least `min_gap`; Brier per model (new vs base); and, where prices are given, the
many-model cost to reach the best single model's quality (cheapest model with P >= bar) as
a share of that model's cost, over the priced models `routing.shared_rows_models` keeps
(those that label at least half of the examples together, or as many as they can) where at
least 20 examples label them all.

Verdict (`better`): the new scorer is at least as good as the base when
- its mean pair APGR is not lower than the base's by more than `apgr_tol` (0.005), and
- its label-weighted mean Brier is not higher than the base's by more than `brier_tol`
  (0.002).
With no scorable pair, only the Brier rule applies; with no labels at all, `better` is
False.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from router_models import metrics
from router_models.learner import Example, fold_ids
from router_models.routing import FALLBACK_COVERAGE, shared_rows_models

F64 = npt.NDArray[np.float64]
Scorer = Callable[[Sequence[Example]], Mapping[str, F64]]


def _round(x: float | None, nd: int = 4) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), nd)


def compare(
    examples: Sequence[Example],
    fit: Callable[[Sequence[Example]], Scorer],
    base: Scorer,
    *,
    folds: int = 5,
    seed: int = 0,
    prices: Mapping[str, float] | None = None,
    min_pair: int = 50,
    min_gap: float = 0.05,
    apgr_tol: float = 0.005,
    brier_tol: float = 0.002,
    fit_base: Callable[[Sequence[Example]], Scorer] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Grouped k-fold comparison of `fit` against `base`; see the module docstring.

    `prices`: USD per request (or any cost unit) per model, for the many-model block.
    `fit_base`: when given, each fold's base scorer is made from that fold's training
    examples (e.g. skills fitted to their labels for models `base` does not know) instead
    of `base` itself. `progress(done, folds)` is called after each fold (a long fit says how
    far it is)."""
    n = len(examples)
    models = sorted({m for e in examples for m in e.labels})
    mi = {m: j for j, m in enumerate(models)}
    y = np.full((n, len(models)), np.nan)
    for i, e in enumerate(examples):
        for m, s in e.labels.items():
            y[i, mi[m]] = float(s)
    fold = fold_ids(examples, max(2, folds), seed)
    p_new = np.full_like(y, np.nan)
    p_base = np.full_like(y, np.nan)
    n_folds = int(fold.max()) + 1
    for k in range(n_folds):
        test = np.flatnonzero(fold == k)
        train = np.flatnonzero(fold != k)
        if test.size == 0 or train.size == 0:
            continue
        tr = [examples[int(i)] for i in train]
        scorer = fit(tr)
        base_k = base if fit_base is None else fit_base(tr)
        tex = [examples[int(i)] for i in test]
        for target, sc in ((p_new, scorer), (p_base, base_k)):
            out = sc(tex)
            for m, p in out.items():
                if m in mi:
                    target[test, mi[m]] = np.asarray(p, dtype=np.float64)
        if progress is not None:
            progress(k + 1, n_folds)
    length = np.array([float(e.sig.n_chars) for e in examples])
    rand = np.random.default_rng(seed + 1).random(n)
    labelled = ~np.isnan(y)

    pairs = []
    means = np.array(
        [np.nanmean(y[:, j]) if labelled[:, j].any() else np.nan for j in range(len(models))]
    )
    for js in range(len(models)):
        for jw in range(len(models)):
            if js == jw or not means[js] - means[jw] >= min_gap:
                continue
            sel = labelled[:, js] & labelled[:, jw]
            sel &= ~np.isnan(p_new[:, js]) & ~np.isnan(p_new[:, jw])
            sel &= ~np.isnan(p_base[:, js]) & ~np.isnan(p_base[:, jw])
            if sel.sum() < min_pair:
                continue
            ys, yw = y[sel, js], y[sel, jw]
            if abs(float(ys.mean() - yw.mean())) < 1e-9:
                continue
            scores = {
                "new": p_new[sel, js] - p_new[sel, jw],
                "base": p_base[sel, js] - p_base[sel, jw],
                "length": length[sel],
                "random": rand[sel],
            }
            row: dict[str, Any] = {"strong": models[js], "weak": models[jw], "n": int(sel.sum())}
            for name, sc in scores.items():
                row[name] = _round(metrics.apgr(metrics.pgr_curve(sc, ys, yw)))
            pairs.append(row)

    brier: dict[str, dict[str, Any]] = {}
    tot_n, tot_new, tot_base = 0, 0.0, 0.0
    for j, m in enumerate(models):
        sel = labelled[:, j] & ~np.isnan(p_new[:, j]) & ~np.isnan(p_base[:, j])
        if not sel.any():
            continue
        bn = metrics.brier(p_new[sel, j], y[sel, j])
        bb = metrics.brier(p_base[sel, j], y[sel, j])
        brier[m] = {"n": int(sel.sum()), "new": _round(bn), "base": _round(bb)}
        tot_n += int(sel.sum())
        tot_new += bn * int(sel.sum())
        tot_base += bb * int(sel.sum())

    report: dict[str, Any] = {
        "examples": n,
        "folds": int(fold.max()) + 1,
        "grouped": len({e.group for e in examples}) >= max(2, folds),
        "pairs": pairs,
        "brier": brier,
    }
    mean_apgr = {
        name: _round(float(np.mean([p[name] for p in pairs]))) if pairs else None
        for name in ("new", "base", "length", "random")
    }
    report["mean_pair_apgr"] = mean_apgr
    report["mean_brier"] = {
        "new": _round(tot_new / tot_n) if tot_n else None,
        "base": _round(tot_base / tot_n) if tot_n else None,
    }
    report["many"] = _many(y, p_new, p_base, length, rand, models, prices)
    ok_brier = tot_n > 0 and tot_new / tot_n <= tot_base / tot_n + brier_tol
    ok_apgr = not pairs or (mean_apgr["new"] or 0.0) >= (mean_apgr["base"] or 0.0) - apgr_tol
    report["better"] = bool(ok_brier and ok_apgr)
    report["rule"] = (
        f"mean pair APGR >= base - {apgr_tol} and label-weighted Brier <= base + {brier_tol}"
    )
    return report


def _many(
    y: F64,
    p_new: F64,
    p_base: F64,
    length: F64,
    rand: F64,
    models: Sequence[str],
    prices: Mapping[str, float] | None,
) -> dict[str, Any] | None:
    if not prices:
        return None
    scored = ~np.isnan(y) & ~np.isnan(p_new) & ~np.isnan(p_base)
    priced = [j for j, m in enumerate(models) if m in prices and scored[:, j].any()]
    cols = shared_rows_models(scored, priced, FALLBACK_COVERAGE)
    if len(cols) < 2:
        return None
    sel = scored[:, cols].all(axis=1)
    if sel.sum() < 20:
        return None
    score = y[sel][:, cols]
    cost = np.tile(np.array([float(prices[models[j]]) for j in cols]), (int(sel.sum()), 1))
    mq = score.mean(axis=0)
    out: dict[str, Any] = {"models": [models[j] for j in cols], "rows": int(sel.sum())}
    z_len = (length[sel] - length[sel].mean()) / (length[sel].std() or 1.0)
    z_rand = (rand[sel] - rand[sel].mean()) / (rand[sel].std() or 1.0)
    # length / random: one shared score per prompt (higher = harder) against each model's
    # logit mean
    q = np.clip(mq, 1e-3, 1 - 1e-3)
    lm = np.log(q / (1 - q))[None, :]
    candidates = {
        "new": p_new[sel][:, cols],
        "base": p_base[sel][:, cols],
        "length": 1.0 / (1.0 + np.exp(z_len[:, None] - lm)),
        "random": 1.0 / (1.0 + np.exp(z_rand[:, None] - lm)),
    }
    for name, p in candidates.items():
        out[name] = _round(metrics.cost_share_to_match_best(p, cost, score))
    return out


def format_comparison(report: Mapping[str, Any]) -> str:
    """A readable table of a `compare` report."""
    how = "grouped" if report["grouped"] else "per example"
    if report["grouped"] and "group_by" in report:
        how = f"grouped by {report['group_by']}"
    lines = [
        f"held-out comparison: {report['examples']} examples, {report['folds']} folds ({how})",
        f"{'strong':28} {'weak':28} {'n':>6} {'new':>7} {'base':>7} {'length':>7} {'random':>7}",
    ]
    for p in report["pairs"]:
        lines.append(
            f"{p['strong'][:28]:28} {p['weak'][:28]:28} {p['n']:>6} "
            + " ".join(f"{_f(p[k]):>7}" for k in ("new", "base", "length", "random"))
        )
    m = report["mean_pair_apgr"]
    lines.append(
        f"{'mean pair APGR':63} "
        + " ".join(f"{_f(m[k]):>7}" for k in ("new", "base", "length", "random"))
    )
    lines.append(f"{'model':40} {'n':>6} {'Brier new':>10} {'base':>8}")
    for name, b in report["brier"].items():
        lines.append(f"{name[:40]:40} {b['n']:>6} {_f(b['new']):>10} {_f(b['base']):>8}")
    mb = report["mean_brier"]
    lines.append(f"{'mean Brier':47} {_f(mb['new']):>10} {_f(mb['base']):>8}")
    many = report.get("many")
    if many:
        lines.append(
            f"many models ({len(many['models'])} priced, {many['rows']} examples labelling all), "
            "cost to match the best single model (share of its cost): "
            + ", ".join(f"{k} {_f(many.get(k))}" for k in ("new", "base", "length", "random"))
        )
    lines.append(f"verdict: {'better' if report['better'] else 'NOT better'} ({report['rule']})")
    return "\n".join(lines)


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
