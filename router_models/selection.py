"""`python -m router_models select --data F.jsonl`: leave-task-out choice of the recipe.

Honest model selection on one training file: prompts are split into group folds by their
`task`, so a feature that only encodes topic cannot look good. Each candidate recipe is
fitted on the other folds (targets: the file's IRT difficulty) and predicts the held-out
tasks; the pooled out-of-fold scores are then scored as strong/weak routers (APGR) for the
default pair and every pair in the pair table, for both the raw difficulty and the IRT
gain score. The reported direction of a cross-file evaluation is never used here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt

from router_models import routing
from router_models.data import DataError, LabelMatrix, label_matrix, load_dataset
from router_models.fit import (
    FitParams,
    MissingExtra,
    featurize,
    fit_weights,
    predict_raw,
    sklearn_models,
)
from router_models.irt import fit_irt

F64 = npt.NDArray[np.float64]
RECIPES: dict[str, FitParams] = {
    "ridge": FitParams(trees=0, length_weight=0.0),
    "ridge+len0.5": FitParams(trees=0, length_weight=0.5),
    "ridge+trees": FitParams(length_weight=0.0),
    "ridge+trees+len0.5": FitParams(length_weight=0.5),
    "ridge+trees+len1": FitParams(length_weight=1.0),
}


def group_folds(tasks: list[str], k: int = 5) -> npt.NDArray[np.int64]:
    """Whole tasks to folds, largest first onto the lightest fold (deterministic)."""
    names, counts = np.unique(np.array(tasks), return_counts=True)
    load = np.zeros(k)
    fold_of: dict[str, int] = {}
    for i in np.argsort(-counts, kind="stable"):
        f = int(np.argmin(load))
        fold_of[str(names[i])] = f
        load[f] += counts[i]
    return np.array([fold_of[t] for t in tasks], dtype=np.int64)


def pair_apgrs(score: F64, labels: LabelMatrix, a: float, pairs: list[tuple[str, str]]) -> F64:
    """Mean APGR over `pairs` of the raw score, and of its IRT gain score."""
    raw, gain = [], []
    for strong, weak in pairs:
        sel, sub, ys, yw = routing.pair_rows(labels, strong, weak)
        s = routing.standardise(score[sel])
        raw.append(routing.pair_result(s, ys, yw).apgr)
        g = routing.gain_score(s, a, sub, strong, weak)
        gain.append(routing.pair_result(g, ys, yw).apgr)
    return np.array([np.mean(raw), np.mean(gain)])


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m router_models select", description=__doc__)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        sklearn_models()
    except MissingExtra as exc:
        print(f"select: {exc}", file=sys.stderr)
        return 2
    try:
        data = load_dataset([args.data])
    except (DataError, OSError) as exc:
        print(f"select: {exc}", file=sys.stderr)
        return 1
    rows = list(data.rows)
    labels = label_matrix(rows)
    irt = fit_irt(labels)
    fm = featurize(rows)
    strong, weak = routing.default_pair(labels, data.prices)
    pairs = [(strong, w) for w in routing.pair_candidates(labels, strong, data.prices)]
    fold = group_folds([r.task for r in rows], args.folds)
    print(f"{args.data.name}: {len(rows)} rows, {len(set(fold.tolist()))} task folds")
    print(f"  mean APGR over {len(pairs)} pairs (strong {strong}); default weak {weak}")
    print(f"  {'recipe':<22}{'raw d':>8}{'gain':>8}")
    base = {
        "length": np.log1p(fm.dense[:, 0]),
        "random": np.random.default_rng(args.seed).random(len(rows)),
        "oracle IRT": irt.difficulty,
    }
    for name, score in base.items():
        r = pair_apgrs(score, labels, irt.discrimination, pairs)
        print(f"  {name:<22}{r[0]:>8.3f}{r[1]:>8.3f}")
    for name, params in RECIPES.items():
        oof = np.zeros(len(rows))
        for k in np.unique(fold):
            tr, te = np.nonzero(fold != k)[0], np.nonzero(fold == k)[0]
            w = fit_weights(fm.take(tr), irt.difficulty[tr], params, args.seed)
            oof[te] = predict_raw(w, fm.take(te))
        r = pair_apgrs(oof, labels, irt.discrimination, pairs)
        print(f"  {name:<22}{r[0]:>8.3f}{r[1]:>8.3f}", flush=True)
    return 0
