"""The run-time estimator: features -> difficulty -> P(acceptable) per model, numpy only.

difficulty = scale * raw + shift, where raw is a linear model on standardised dense
features plus an optional ensemble of small regression trees on them. The trees are
stored as flat arrays and walked for all trees at once, level by level.

P(acceptable) of a model: when the artifact carries learned per-model heads
(``router_models.heads.Heads``, fitted on a deployment's own labels) and has one for that
model, the head's calibrated probability; otherwise the IRT link of the model's skill and
the difficulty (the prior).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from router_models.features import N_DENSE, Features, extract
from router_models.irt import irt_p

if TYPE_CHECKING:
    from router_models.heads import Heads
    from router_models.signature import Signature

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
# the run-time walk indexes a table of 2**(2**depth - 1) decision patterns per depth
MAX_TREE_DEPTH = 4


@dataclass(frozen=True, slots=True)
class Trees:
    """Complete binary trees of one depth: node k has children 2k+1, 2k+2 (heap order)."""

    feature: I64  # (n_trees, n_internal)
    threshold: F64  # (n_trees, n_internal); go left when x <= threshold
    leaf: F64  # (n_trees, 2**depth)
    depth: int

    def predict(self, dense: F64) -> float:
        n_trees = self.feature.shape[0]
        rows = np.arange(n_trees)
        node = np.zeros(n_trees, dtype=np.int64)
        for _ in range(self.depth):
            go_right = dense[self.feature[rows, node]] > self.threshold[rows, node]
            node = 2 * node + 1 + go_right
        first_leaf = (1 << self.depth) - 1
        return float(self.leaf[rows, node - first_leaf].sum())

    def predict_many(self, dense: F64) -> F64:
        n_rows, n_trees = dense.shape[0], self.feature.shape[0]
        rows = np.arange(n_trees)[None, :]
        node = np.zeros((n_rows, n_trees), dtype=np.int64)
        samples = np.arange(n_rows)[:, None]
        for _ in range(self.depth):
            feat = self.feature[rows, node]
            go_right = dense[samples, feat] > self.threshold[rows, node]
            node = 2 * node + 1 + go_right
        first_leaf = (1 << self.depth) - 1
        out: F64 = self.leaf[rows, node - first_leaf].sum(axis=1)
        return out


@dataclass(frozen=True, slots=True)
class Weights:
    """Everything needed to turn Features into a difficulty."""

    dense_mean: F64
    dense_scale: F64
    dense_coef: F64
    intercept: float
    scale: float = 1.0
    shift: float = 0.0
    trees: Trees | None = None

    def raw(self, features: Features) -> float:
        z = (features.dense - self.dense_mean) / self.dense_scale
        total = self.intercept + float(z @ self.dense_coef)
        if self.trees is not None:
            total += self.trees.predict(z)
        return total

    def difficulty(self, features: Features) -> float:
        return self.scale * self.raw(features) + self.shift


def _leaf_table(depth: int) -> npt.NDArray[np.intp]:
    """Leaf index of a complete tree for every pattern of its internal nodes' decisions.

    Bit k of a pattern is node k's decision (1 = go right); only the `depth` nodes on the
    path matter, so all 2**(2**depth - 1) patterns map to one of 2**depth leaves."""
    n_internal = (1 << depth) - 1
    table = np.zeros(1 << n_internal, dtype=np.intp)
    for pattern in range(1 << n_internal):
        node = 0
        for _ in range(depth):
            node = 2 * node + 1 + ((pattern >> node) & 1)
        table[pattern] = node - n_internal
    return table


class _Compiled:
    """Weights folded for scoring one request: the standardisation, scale and shift are
    folded into the linear coefficients and tree thresholds. Every internal node of every
    tree is compared in one vectorised pass; each tree's decisions, read as a bit pattern,
    index a table of leaves, so a call costs one dot product and a handful of numpy calls
    whatever the number of trees (depth <= MAX_TREE_DEPTH keeps the table small)."""

    __slots__ = ("coef", "feature", "intercept", "leaf", "leaf_base", "pow2", "table", "thr")

    def __init__(self, w: Weights) -> None:
        coef_z = w.dense_coef / w.dense_scale
        self.coef: F64 = w.scale * coef_z
        self.intercept = w.scale * (w.intercept - float(w.dense_mean @ coef_z)) + w.shift
        t = w.trees
        if t is None or t.feature.shape[0] == 0 or t.depth == 0:
            self.feature = np.zeros(0, dtype=np.int64)
            self.thr: F64 = np.zeros(0)
            self.leaf: F64 = np.zeros(0)
            self.leaf_base = np.zeros(0, dtype=np.intp)
            self.pow2: F64 = np.zeros(0)
            self.table = np.zeros(0, dtype=np.intp)
            return
        n_trees, n_internal = t.feature.shape
        self.feature = t.feature.ravel()
        # z <= thr, z = (x - mean) / scale  <=>  x <= thr * scale + mean
        self.thr = (t.threshold * w.dense_scale[t.feature] + w.dense_mean[t.feature]).ravel()
        self.leaf = (w.scale * t.leaf).ravel()
        self.leaf_base = np.arange(n_trees, dtype=np.intp) * (1 << t.depth)
        # (n_trees * n_internal,) decisions -> (n_trees,) patterns by one matrix product
        self.pow2 = 2.0 ** np.arange(n_internal, dtype=np.float64)
        self.table = _leaf_table(t.depth)

    def difficulty(self, dense: F64) -> float:
        total = self.intercept + float(dense @ self.coef)
        if self.table.size:
            right = (dense[self.feature] > self.thr).reshape(-1, self.pow2.shape[0])
            pattern = (right @ self.pow2).astype(np.intp)
            total += float(self.leaf[self.leaf_base + self.table[pattern]].sum())
        return total


def _check_shapes(w: Weights) -> None:
    shapes = {
        "dense_mean": w.dense_mean.shape,
        "dense_scale": w.dense_scale.shape,
        "dense_coef": w.dense_coef.shape,
    }
    for name, shape in shapes.items():
        if shape != (N_DENSE,):
            raise ValueError(f"{name} has shape {shape}, expected ({N_DENSE},)")
    finite = np.isfinite(w.dense_coef).all() and np.isfinite(w.dense_mean).all()
    if not (np.all(w.dense_scale > 0) and finite):
        raise ValueError("non-positive scale or non-finite weights")
    t = w.trees
    if t is not None:
        if not 1 <= t.depth <= MAX_TREE_DEPTH:
            raise ValueError(f"tree depth {t.depth} is outside 1..{MAX_TREE_DEPTH}")
        n_internal = (1 << t.depth) - 1
        if t.feature.shape != (t.feature.shape[0], n_internal) or t.threshold.shape != (
            t.feature.shape
        ):
            raise ValueError("tree arrays do not match their depth")
        if t.leaf.shape != (t.feature.shape[0], 1 << t.depth):
            raise ValueError("tree leaves do not match their depth")
        if t.feature.size and (t.feature.min() < 0 or t.feature.max() >= N_DENSE):
            raise ValueError("tree feature index out of range")


class Scorer:
    """P(acceptable) of a fixed list of models, compiled once (per policy route) so that one
    request costs one feature pass, one difficulty and, where heads exist, one head pass.

    ``scorer(messages, tools, task) -> (difficulty, {catalog id: P})``; the mapping is None
    when no model of the list has a learned head (the IRT link then applies, as ``decide``
    computes it). ``task``: the request's workflow tag, where the heads learned one."""

    __slots__ = ("_est", "_heads", "_head_ids", "_signature", "ids")

    def __init__(self, est: Estimator, models: Sequence[tuple[str, str]]) -> None:
        self._est = est
        self.ids = tuple(i for i, _ in models)
        heads = est.heads
        found = [] if heads is None else [(i, heads.index(i), heads.index(u)) for i, u in models]
        pairs = [(i, a if a is not None else b) for i, a, b in found]
        hits = [(i, k) for i, k in pairs if k is not None]
        self._head_ids = tuple(i for i, _ in hits)
        if hits:
            from router_models.signature import signature

            self._signature = signature
            assert heads is not None
            # this route's candidates only: the per-request gather is (buckets x candidates)
            self._heads = heads.subset([k for _, k in hits])

    @property
    def learned(self) -> tuple[str, ...]:
        """The ids of the models this scorer has learned heads for (their P come from the
        heads; the rest take the IRT formula)."""
        return self._head_ids

    def __call__(
        self, messages: Sequence[Any], tools: Sequence[Any] | None = None, task: str | None = None
    ) -> tuple[float, dict[str, float] | None]:
        d, p, _ = self.score(messages, tools, task)
        return d, p

    def score(
        self, messages: Sequence[Any], tools: Sequence[Any] | None = None, task: str | None = None
    ) -> tuple[float, dict[str, float] | None, Signature | F64]:
        """As calling it, plus what the request log can reuse rather than compute again: the
        request's signature where the heads needed one (made without its digest;
        `router_models.signature.with_digest` adds it), else the dense features the
        difficulty came from (`signature(..., dense=...)` takes them)."""
        est = self._est
        if not self._head_ids:
            dense = extract(messages).dense
            return est._compiled.difficulty(dense), None, dense
        # one feature pass: the signature's dense features (as training saw them) give the
        # prior's difficulty, which is one input of the heads
        sig = self._signature(messages, tools, digest=False)
        d = est._compiled.difficulty(sig.dense)
        p = self._heads.p(sig, d, None, task)
        return d, dict(zip(self._head_ids, p.tolist(), strict=True)), sig


class Estimator:
    """Difficulty of a chat request, and the chance each model handles it."""

    __slots__ = ("_compiled", "_skills", "_weights", "discrimination", "heads", "metadata")

    def __init__(
        self,
        weights: Weights,
        *,
        skills: Mapping[str, float],
        discrimination: float,
        metadata: Mapping[str, Any] | None = None,
        heads: Heads | None = None,
    ) -> None:
        _check_shapes(weights)
        if not (math.isfinite(discrimination) and discrimination > 0):
            raise ValueError(f"discrimination must be positive, got {discrimination!r}")
        self._weights = weights
        self._compiled = _Compiled(weights)
        self._skills = {str(k): float(v) for k, v in skills.items()}
        self.discrimination = float(discrimination)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.heads = heads

    @property
    def weights(self) -> Weights:
        return self._weights

    @property
    def skills(self) -> dict[str, float]:
        return dict(self._skills)

    def difficulty(self, messages: Sequence[Any]) -> float:
        """One scalar per request; higher is harder (skill units)."""
        return self._compiled.difficulty(extract(messages).dense)

    def difficulty_of_dense(self, dense: F64) -> float:
        """The difficulty of a request from its dense features (a signature's ``dense``)."""
        return self._compiled.difficulty(np.asarray(dense, dtype=np.float64))

    def difficulties(self, batch: Sequence[Sequence[Any]]) -> F64:
        return np.array([self.difficulty(m) for m in batch], dtype=np.float64)

    def p_acceptable(
        self,
        messages: Sequence[Any],
        skill: float | None = None,
        *,
        model: str | None = None,
        task: str | None = None,
    ) -> float:
        """P(acceptable answer) of one model on this request.

        ``model`` (a catalog id or upstream model name): the learned head's probability when
        the artifact has labels for it (``task``: the request's workflow tag, used where the
        head learned one), else the IRT link with its fitted skill (``skill`` wins when
        given). Without ``model``: sigmoid(a * (skill - difficulty)). Raises
        ``KeyError`` for a model with neither a head nor a skill (and no ``skill`` given)."""
        if model is not None:
            k = self.heads.index(model) if self.heads is not None else None
            if k is not None:
                from router_models.signature import signature

                assert self.heads is not None
                sig = signature(messages)
                d = self._compiled.difficulty(sig.dense)
                return float(self.heads.p(sig, d, np.array([k]), task)[0])
            if skill is None:
                if model not in self._skills:
                    raise KeyError(f"no head and no skill for model {model!r}")
                skill = self._skills[model]
        if skill is None:
            raise TypeError("p_acceptable needs a skill or a model")
        return irt_p(self.discrimination, skill, self.difficulty(messages))

    def scorer(self, models: Sequence[tuple[str, str]]) -> Scorer:
        """A ``Scorer`` for (catalog id, upstream model name) pairs, heads matched by either."""
        return Scorer(self, models)
