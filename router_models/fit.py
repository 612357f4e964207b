"""Learn features -> difficulty with scikit-learn, exported as plain arrays (`Weights`).

A ridge line plus small gradient-boosted trees on the standardised dense structure
features, fitted to the IRT difficulty. The fitted score is then divided by its spread on
the training prompts and blended with standardised prompt length at a fixed weight
(`FitParams.length_weight`), so length, the baseline that transfers across domains, is
always one input. All choices here were made by leave-task-out validation on the training
files (docs/estimator.md). sklearn is imported here only, when fitting (`effgate[train]`);
run time never needs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from router_models.data import Row
from router_models.estimator import Trees, Weights
from router_models.features import DENSE_NAMES, N_DENSE, extract

F64 = npt.NDArray[np.float64]
LENGTH = DENSE_NAMES.index("log_chars")
TRAIN_EXTRA = "pip install 'effgate[train]'"


class MissingExtra(ImportError):
    """A package of an optional extra is not installed; the message says how to install it."""


def sklearn_models() -> tuple[Any, Any]:
    """(Ridge, GradientBoostingRegressor); MissingExtra without scikit-learn."""
    try:
        from sklearn.ensemble import GradientBoostingRegressor
        from sklearn.linear_model import Ridge
    except ImportError as exc:
        raise MissingExtra(f"training needs scikit-learn: {TRAIN_EXTRA}") from exc
    return Ridge, GradientBoostingRegressor


def sklearn_randomized_svd() -> Any:
    """scikit-learn's ``randomized_svd``; MissingExtra without scikit-learn."""
    try:
        from sklearn.utils.extmath import randomized_svd
    except ImportError as exc:
        raise MissingExtra(f"training needs scikit-learn: {TRAIN_EXTRA}") from exc
    return randomized_svd


def require_scipy() -> None:
    """MissingExtra without scipy (the learner's and the calibration stage's optimiser)."""
    try:
        import scipy.linalg
        import scipy.optimize  # noqa: F401
    except ImportError as exc:
        raise MissingExtra(f"training needs scipy: {TRAIN_EXTRA}") from exc


@dataclass(frozen=True, slots=True)
class FitParams:
    dense_alpha: float = 10.0
    trees: int = 150
    tree_depth: int = 3
    learning_rate: float = 0.05
    min_leaf: int = 40
    # weight of standardised log length beside the unit-spread fitted score
    length_weight: float = 0.5


@dataclass(frozen=True, slots=True)
class FeatureMatrix:
    dense: F64  # (n, N_DENSE)

    def take(self, idx: npt.NDArray[np.int64]) -> FeatureMatrix:
        return FeatureMatrix(self.dense[idx])


def featurize(rows: Sequence[Row], progress: Any = None) -> FeatureMatrix:
    dense = np.zeros((len(rows), N_DENSE))
    for i, row in enumerate(rows):
        dense[i] = extract(row.messages).dense
        if progress is not None:
            progress.update(1)
    return FeatureMatrix(dense=dense)


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
    """Fit ridge + trees on (features, difficulty), blend in length; raw-scale weights."""
    Ridge, GradientBoostingRegressor = sklearn_models()
    mean = fm.dense.mean(axis=0)
    scale = fm.dense.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    z = (fm.dense - mean) / scale
    ridge = Ridge(alpha=params.dense_alpha).fit(z, target)
    coef = np.asarray(ridge.coef_, dtype=np.float64)
    intercept = float(ridge.intercept_)
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
        intercept += float(np.asarray(gbm.init_.constant_).ravel()[0])
        pred = intercept + z @ coef + trees.predict_many(z)
    spread = float(pred.std())
    k = 1.0 / spread if spread > 1e-9 else 1.0
    coef = coef * k
    coef[LENGTH] += params.length_weight  # z[:, LENGTH] is standardised log length
    if trees is not None:
        trees = Trees(trees.feature, trees.threshold, trees.leaf * k, trees.depth)
    return Weights(
        dense_mean=mean,
        dense_scale=scale,
        dense_coef=coef,
        intercept=intercept * k,
        trees=trees,
    )


def predict_raw(weights: Weights, fm: FeatureMatrix) -> F64:
    z = (fm.dense - weights.dense_mean) / weights.dense_scale
    out: F64 = weights.intercept + z @ weights.dense_coef
    if weights.trees is not None:
        out = out + weights.trees.predict_many(z)
    return out
