"""Training pipeline: rows -> IRT targets -> regressor -> cross-fitted calibration -> metrics.

Prompts are split once (seeded) into train and held-out test. IRT difficulties are fitted
on train labels only; the regressor learns them from features; calibration (a, skills, or
an affine map of the raw score when skills are anchored) is fitted on out-of-fold
predictions, so the probabilities are calibrated on prompts the regressor did not see.
Test rows are touched once, for the reported metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from router_models import metrics
from router_models.data import LabelMatrix, Row, label_matrix
from router_models.estimator import Weights
from router_models.fit import FeatureMatrix, FitParams, featurize, fit_weights, predict_raw
from router_models.irt import Calibration, calibrate, fit_irt, irt_p

F64 = npt.NDArray[np.float64]
Step = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Trained:
    weights: Weights
    skills: dict[str, float]
    discrimination: float
    metrics: dict[str, object]
    n_train: int
    n_test: int
    test_idx: npt.NDArray[np.int64]
    test_difficulty: F64


def split(n: int, test_fraction: float, seed: int) -> tuple[npt.NDArray[np.int64], ...]:
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction)) if n >= 10 else 0
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def _sub(labels: LabelMatrix, idx: npt.NDArray[np.int64]) -> LabelMatrix:
    return LabelMatrix(labels.models, labels.scores[idx], labels.mask[idx])


def _oof_raw(fm: FeatureMatrix, target: F64, params: FitParams, seed: int, folds: int) -> F64:
    n = target.shape[0]
    fold = np.random.default_rng(seed + 1).permutation(n) % folds
    raw = np.zeros(n)
    for k in range(folds):
        held = np.nonzero(fold == k)[0]
        kept = np.nonzero(fold != k)[0]
        w = fit_weights(fm.take(kept), target[kept], params, seed)
        raw[held] = predict_raw(w, fm.take(held))
    return raw


def probability_metrics(
    d: F64, labels: LabelMatrix, skills: Mapping[str, float], a: float
) -> dict[str, object]:
    """Brier score, log loss and a reliability table over every labelled (prompt, model)."""
    rows, cols = np.nonzero(labels.mask)
    s = np.array([skills.get(m, np.nan) for m in labels.models])[cols]
    keep = np.isfinite(s)
    p = irt_p(a, s[keep], d[rows[keep]])
    y = labels.scores[rows[keep], cols[keep]]
    eps = 1e-9
    logloss = float(-(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)).mean())
    base = float(y.mean())
    return {
        "pairs": int(keep.sum()),
        "brier": round(metrics.brier(p, y), 5),
        "brier_constant": round(metrics.brier(np.full_like(y, base), y), 5),
        "log_loss": round(logloss, 5),
        "reliability": [{k: round(v, 4) for k, v in b.items()} for b in metrics.reliability(p, y)],
    }


def train(
    rows: Sequence[Row],
    *,
    seed: int = 0,
    params: FitParams | None = None,
    test_fraction: float = 0.15,
    folds: int = 5,
    anchors: Mapping[str, float] | None = None,
    anchor_discrimination: float | None = None,
    step: Step | None = None,
    featurize_progress: object = None,
) -> Trained:
    """The whole fit; deterministic for a given seed."""
    params = params or FitParams()
    note = step or (lambda _msg: None)
    labels = label_matrix(rows)
    note("features")
    fm = featurize(rows, featurize_progress)
    train_idx, test_idx = split(len(rows), test_fraction, seed)
    train_labels = _sub(labels, train_idx)
    known = {m: s for m, s in (anchors or {}).items() if m in labels.models}
    note("irt")
    irt = fit_irt(
        train_labels,
        anchors=known,
        anchor_discrimination=anchor_discrimination if known else None,
    )
    target = irt.difficulty
    fm_train = fm.take(train_idx)
    note("calibration")
    raw_oof = _oof_raw(fm_train, target, params, seed, folds)
    if known:
        cal: Calibration = calibrate(
            raw_oof, train_labels, anchors=known, anchor_discrimination=irt.discrimination
        )
    else:
        cal = calibrate(raw_oof, train_labels)
    # carry over anchored skills of models absent from these rows
    skills = {**dict(anchors or {}), **cal.skills}
    note("regressor")
    weights = replace(fit_weights(fm_train, target, params, seed), scale=cal.scale, shift=cal.shift)
    result: dict[str, object] = {
        "irt_discrimination": round(irt.discrimination, 5),
        "oof_train": probability_metrics(
            cal.scale * raw_oof + cal.shift, train_labels, skills, cal.discrimination
        ),
    }
    d_test = cal.scale * predict_raw(weights, fm.take(test_idx)) + cal.shift
    if test_idx.size:
        note("test metrics")
        result["held_out"] = probability_metrics(
            d_test, _sub(labels, test_idx), skills, cal.discrimination
        )
    return Trained(
        weights=weights,
        skills=skills,
        discrimination=cal.discrimination,
        metrics=result,
        n_train=int(train_idx.size),
        n_test=int(test_idx.size),
        test_idx=test_idx,
        test_difficulty=d_test,
    )
