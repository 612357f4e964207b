"""Learn features -> difficulty with scikit-learn, exported as plain arrays (`Weights`).

Two stages, so that signals which transfer across domains speak first: (1) a ridge line
plus small gradient-boosted trees on the standardised dense structure features, (2) a
strongly regularised ridge on hashed n-grams fitted to what stage 1 leaves unexplained.
sklearn is imported here only; the run-time estimator never needs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from router_models.data import Row
from router_models.estimator import Trees, Weights
from router_models.features import HASH_SIZE, N_DENSE, N_GROUPS, extract

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class FitParams:
    dense_alpha: float = 10.0
    trees: int = 150
    tree_depth: int = 3
    learning_rate: float = 0.05
    min_leaf: int = 40
    hashed_alpha: float = 30.0
    group_weights: tuple[float, ...] = (1.0, 0.5, 0.5)


@dataclass(frozen=True, slots=True)
class FeatureMatrix:
    dense: F64  # (n, N_DENSE)
    hashed: sp.csr_matrix  # (n, N_GROUPS * HASH_SIZE), each group's row sums to sqrt(count)

    def take(self, idx: npt.NDArray[np.int64]) -> FeatureMatrix:
        return FeatureMatrix(self.dense[idx], self.hashed[idx])


def featurize(rows: Sequence[Row], progress: Any = None) -> FeatureMatrix:
    dense = np.zeros((len(rows), N_DENSE))
    indptr, indices, values = [0], [], []
    for i, row in enumerate(rows):
        feats = extract(row.messages)
        dense[i] = feats.dense
        for g, ids in enumerate(feats.hashed):
            if ids.size:
                indices.append(ids + g * HASH_SIZE)
                values.append(np.full(ids.size, 1.0 / np.sqrt(ids.size)))
        indptr.append(indptr[-1] + sum(ids.size for ids in feats.hashed))
        if progress is not None:
            progress.update(1)
    cat_idx = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    cat_val = np.concatenate(values) if values else np.zeros(0)
    hashed = sp.csr_matrix(
        (cat_val, cat_idx, np.array(indptr)), shape=(len(rows), N_GROUPS * HASH_SIZE)
    )
    hashed.sum_duplicates()
    return FeatureMatrix(dense=dense, hashed=hashed)


def _export_trees(estimators: Any, depth: int, learning_rate: float) -> Trees:
    """sklearn trees -> complete heap-ordered arrays (short branches padded)."""
    n_internal, n_leaf = (1 << depth) - 1, 1 << depth
    feature = np.zeros((len(estimators), n_internal), dtype=np.int64)
    threshold = np.full((len(estimators), n_internal), np.inf)
    leaf = np.zeros((len(estimators), n_leaf))
    for t, est in enumerate(estimators):
        tree = est.tree_

        def walk(node: int, heap: int, level: int, t: int = t, tree: Any = tree) -> None:
            left, right = tree.children_left[node], tree.children_right[node]
            if level == depth or left == -1:
                first = heap * (1 << (depth - level)) + (1 << (depth - level)) - 1
                lo = first - n_internal
                leaf[t, lo : lo + (1 << (depth - level))] = learning_rate * tree.value[node][0][0]
                return
            feature[t, heap] = tree.feature[node]
            threshold[t, heap] = tree.threshold[node]
            walk(left, 2 * heap + 1, level + 1)
            walk(right, 2 * heap + 2, level + 1)

        walk(0, 0, 0)
    return Trees(feature=feature, threshold=threshold, leaf=leaf, depth=depth)


def fit_weights(fm: FeatureMatrix, target: F64, params: FitParams, seed: int) -> Weights:
    """Fit both stages on (features, difficulty) and return raw-scale weights."""
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.linear_model import Ridge

    mean = fm.dense.mean(axis=0)
    scale = fm.dense.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    z = (fm.dense - mean) / scale
    ridge = Ridge(alpha=params.dense_alpha).fit(z, target)
    pred = ridge.predict(z)
    trees = None
    if params.trees > 0:
        gbm = GradientBoostingRegressor(
            n_estimators=params.trees,
            max_depth=params.tree_depth,
            learning_rate=params.learning_rate,
            min_samples_leaf=params.min_leaf,
            subsample=0.8,
            random_state=seed,
        )
        gbm.fit(z, target - pred)
        trees = _export_trees(gbm.estimators_[:, 0], params.tree_depth, params.learning_rate)
        # GradientBoostingRegressor starts from the mean residual
        intercept_gbm = float(np.asarray(gbm.init_.constant_).ravel()[0])
        pred = pred + intercept_gbm + trees.predict_many(z)
    else:
        intercept_gbm = 0.0
    hashed_coef = np.zeros((N_GROUPS, HASH_SIZE), dtype=np.float32)
    hashed_intercept = 0.0
    if params.hashed_alpha > 0 and fm.hashed.nnz:
        gw = np.repeat(np.asarray(params.group_weights, dtype=np.float64), HASH_SIZE)
        x = fm.hashed @ sp.diags(gw)
        lex = Ridge(alpha=params.hashed_alpha, solver="sparse_cg", tol=1e-6).fit(x, target - pred)
        hashed_coef = (lex.coef_ * gw).reshape(N_GROUPS, HASH_SIZE).astype(np.float32)
        hashed_intercept = float(lex.intercept_)
    return Weights(
        dense_mean=mean,
        dense_scale=scale,
        dense_coef=np.asarray(ridge.coef_, dtype=np.float64),
        hashed_coef=hashed_coef,
        intercept=float(ridge.intercept_) + intercept_gbm + hashed_intercept,
        trees=trees,
    )


def predict_raw(weights: Weights, fm: FeatureMatrix) -> F64:
    z = (fm.dense - weights.dense_mean) / weights.dense_scale
    out: F64 = weights.intercept + z @ weights.dense_coef
    out = out + fm.hashed @ weights.hashed_coef.astype(np.float64).ravel()
    if weights.trees is not None:
        out = out + weights.trees.predict_many(z)
    return out
