"""The learner's per-model heads at run time: numpy only, plain arrays (`heads.npz`).

`Heads.logits(sig, d, models, tag)` gives one logit per model for a request's signature
and the prior's difficulty d: the heads' weights over the signature's active n-gram buckets
(sublinear tf times idf, each block l2-normalised) and its standardised dense features plus
d, the prior's slope on d, and, where the calibration stage chose them, the model's shift
for the request's workflow cluster (`router_models.clusters.ClusterMap`) and for its
workflow tag (`x-effgate-task`). A route's scorer holds `Heads.subset` of its candidates.
Fitting them is `router_models.learner` (scipy, training only); reading and writing them is
`router_models.artifact`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from router_models.clusters import CLIP, ClusterMap, narrowest
from router_models.features import N_DENSE
from router_models.neighbours import Neighbours
from router_models.signature import MAX_COUNT, N_BUCKETS, WORD_BUCKETS, Signature

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
# 2: optional workflow clusters and tags; 3: optional nearest neighbours (1 and 2 still load)
HEADS_VERSION = 3
HEADS_VERSIONS = (1, 2, 3)
N_EXTRA = N_DENSE + 1  # dense features and the prior difficulty


# 1 + log(count) for every count a signature can hold
_LOG_TF = np.concatenate(([0.0], 1.0 + np.log(np.arange(1, MAX_COUNT + 1, dtype=np.float64))))


def logistic(z: F64) -> F64:
    """1 / (1 + e^-z) through tanh: overflow-free, and one ufunc pass."""
    out: F64 = 0.5 * (1.0 + np.tanh(0.5 * z))
    return out


@dataclass(frozen=True, slots=True)
class Heads:
    """Per-model logistic heads over a signature; numpy only, plain arrays."""

    models: tuple[str, ...]
    label_counts: I64  # (M,) labels each model was fitted on
    active_ids: I64  # (A,) sorted bucket ids that carry weight
    idf: F64  # (A,)
    idf_default: float  # idf of every other bucket (for the l2 norms)
    sparse_w: F64  # (A, M)
    dense_mean: F64  # (N_EXTRA,)
    dense_scale: F64  # (N_EXTRA,)
    dense_w: F64  # (N_EXTRA, M)
    intercept: F64  # (M,)
    d_coef: F64  # (M,) prior slope on the difficulty
    word_weight: float = 1.0
    char_weight: float = 1.0
    # workflow clusters and (K, M) each model's logit shift in each; workflow tags and
    # (T, M) each model's shift for each (both from the calibration stage)
    clusters: ClusterMap | None = None
    cluster_w: F64 | None = None
    tags: tuple[str, ...] = ()
    tag_w: F64 | None = None
    # the nearest-neighbour stage: P blended with the labels of the k nearest references
    neighbours: Neighbours | None = None
    # per-request tables: bucket -> row (A for a bucket without weight), idf by row and
    # the weights by row, each with a last row for those buckets (idf_default; zeros)
    _lookup: npt.NDArray[np.integer[Any]] = field(init=False, repr=False, compare=False)
    _idf_rows: F64 = field(init=False, repr=False, compare=False)
    _w_rows: npt.NDArray[np.floating[Any]] = field(init=False, repr=False, compare=False)
    _index: dict[str, int] = field(init=False, repr=False, compare=False)
    _tag_index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.clusters is None) != (self.cluster_w is None):
            raise ValueError("clusters and cluster_w come together")
        k = None if self.clusters is None else self.clusters.k
        if self.cluster_w is not None and self.cluster_w.shape != (k, len(self.models)):
            raise ValueError("cluster_w must have one row per cluster and a column per model")
        if (self.tag_w is None) != (not self.tags) or (
            self.tag_w is not None and self.tag_w.shape != (len(self.tags), len(self.models))
        ):
            raise ValueError("tag_w must have one row per tag and a column per model")
        nb = self.neighbours
        if nb is not None and (
            nb.y.shape[1] != len(self.models) or nb.indptr.shape != (self.active_ids.size + 2,)
        ):
            raise ValueError("neighbours must cover these heads' models and active buckets")
        object.__setattr__(self, "_tag_index", {t: j for j, t in enumerate(self.tags)})
        n_active = self.active_ids.size
        # uint16 rows where they fit (half the table a request's gather touches): rows go
        # up to A, and the neighbours' postings read row + 1
        small = n_active + 1 <= np.iinfo(np.uint16).max
        lookup = np.full(N_BUCKETS, n_active, dtype=np.uint16 if small else np.int32)
        lookup[self.active_ids] = np.arange(n_active)
        object.__setattr__(self, "_lookup", lookup)
        object.__setattr__(self, "_idf_rows", np.append(self.idf, self.idf_default))
        w_rows = np.zeros((n_active + 1, len(self.models)), dtype=narrowest(self.sparse_w))
        w_rows[:n_active] = self.sparse_w
        object.__setattr__(self, "_w_rows", w_rows)
        object.__setattr__(self, "_index", {m: j for j, m in enumerate(self.models)})

    def index(self, name: str) -> int | None:
        return self._index.get(name)

    def _x(self, sig: Signature) -> tuple[npt.NDArray[np.integer[Any]], F64]:
        """(row of each of the signature's buckets, A for one without weight; its value:
        sublinear tf times idf, the word and the character block each l2-normalised)."""
        rows = self._lookup[sig.ids]
        w = _LOG_TF[sig.counts] * self._idf_rows[rows]
        words = int(sig.ids.searchsorted(WORD_BUCKETS))  # ids are sorted
        sq = w * w
        nw = math.sqrt(float(sq[:words].sum()))
        nc = math.sqrt(float(sq[words:].sum()))
        w[:words] *= self.word_weight / (nw or 1.0)
        w[words:] *= self.char_weight / (nc if nc > 1e-12 else 1.0)
        return rows, w

    def logits(
        self,
        sig: Signature,
        prior_difficulty: float,
        models_idx: npt.NDArray[np.intp] | None = None,
        tag: str | None = None,
    ) -> F64:
        """One logit per model (all, or those at `models_idx`); ``tag``: the request's
        workflow tag (a tag the heads were not fitted on adds nothing)."""
        out = self._logits(sig, *self._x(sig), prior_difficulty, tag)
        return out if models_idx is None else out[np.asarray(models_idx, dtype=np.intp)]

    def _logits(
        self,
        sig: Signature,
        rows: npt.NDArray[np.integer[Any]],
        x: F64,
        prior_difficulty: float,
        tag: str | None,
    ) -> F64:
        z = np.empty(N_EXTRA)
        z[:N_DENSE] = sig.dense
        z[N_DENSE] = prior_difficulty
        z -= self.dense_mean
        z /= self.dense_scale
        np.minimum(np.maximum(z, -CLIP, out=z), CLIP, out=z)  # np.clip, without its wrapper
        out: F64 = x @ self._w_rows.take(rows, axis=0).astype(np.float64, copy=False)
        out += z @ self.dense_w
        out += self.intercept
        out += self.d_coef * prior_difficulty
        shift = self._workflow_shift(sig, tag)
        if shift is not None:
            out += shift
        return out

    def _workflow_shift(self, sig: Signature, tag: str | None) -> F64 | None:
        """(M,) the calibration stage's shift for the request's cluster plus its tag's; None
        when the heads have neither (or the tag is one they were not fitted on)."""
        out = None
        if self.clusters is not None and self.cluster_w is not None:
            out = self.cluster_w[self.clusters.assign(sig)]
        j = self._tag_index.get(tag) if tag and self.tag_w is not None else None
        if j is not None and self.tag_w is not None:
            out = self.tag_w[j] if out is None else out + self.tag_w[j]
        return out

    def p(
        self,
        sig: Signature,
        prior_difficulty: float,
        models_idx: npt.NDArray[np.intp] | None = None,
        tag: str | None = None,
    ) -> F64:
        """P(acceptable) per model (all, or those at `models_idx`): the logistic of the
        logits, blended with the nearest references' labels where the heads have them."""
        rows, x = self._x(sig)
        out = logistic(self._logits(sig, rows, x, prior_difficulty, tag))
        if self.neighbours is not None:
            out = self.neighbours.blend(out, rows, x)
        return out if models_idx is None else out[np.asarray(models_idx, dtype=np.intp)]

    def subset(self, models_idx: Sequence[int] | npt.NDArray[np.intp]) -> Heads:
        """The heads of the models at ``models_idx`` only, in that order, their weights in
        arrays of their own: a route's scorer gathers (buckets x its candidates) per request
        instead of (buckets x every model the artifact knows). Same probabilities."""
        cols = np.asarray(models_idx, dtype=np.intp)
        return replace(
            self,
            models=tuple(self.models[int(j)] for j in cols),
            label_counts=self.label_counts[cols],
            sparse_w=np.ascontiguousarray(self.sparse_w[:, cols]),
            dense_w=np.ascontiguousarray(self.dense_w[:, cols]),
            intercept=self.intercept[cols].copy(),
            d_coef=self.d_coef[cols].copy(),
            cluster_w=None if self.cluster_w is None else self.cluster_w[:, cols].copy(),
            tag_w=None if self.tag_w is None else self.tag_w[:, cols].copy(),
            neighbours=None if self.neighbours is None else self.neighbours.subset(cols),
        )

    def p_many(
        self, sigs: Sequence[Signature], difficulty: F64, tags: Sequence[str] | None = None
    ) -> F64:
        """(len(sigs), M) probabilities (offline evaluation)."""
        tags = tags if tags is not None else [""] * len(sigs)
        return np.stack(
            [self.p(s, float(d), None, t) for s, d, t in zip(sigs, difficulty, tags, strict=True)]
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        extra = {}
        if self.clusters is not None and self.cluster_w is not None:
            extra = {**self.clusters.to_arrays(), "cluster_w": self.cluster_w}
        if self.tag_w is not None:
            extra["tag_w"] = self.tag_w
        if self.neighbours is not None:
            extra.update(self.neighbours.to_arrays())
        return {
            **extra,
            "label_counts": self.label_counts,
            "active_ids": self.active_ids,
            "idf": self.idf,
            "sparse_w": self.sparse_w.astype(np.float32),
            "dense_mean": self.dense_mean,
            "dense_scale": self.dense_scale,
            "dense_w": self.dense_w,
            "intercept": self.intercept,
            "d_coef": self.d_coef,
        }

    def meta(self) -> dict[str, Any]:
        return {
            # 3 only where it matters: a gateway that reads 2 still loads the rest
            "version": HEADS_VERSION if self.neighbours is not None else 2,
            "models": list(self.models),
            "idf_default": self.idf_default,
            "word_weight": self.word_weight,
            "char_weight": self.char_weight,
            "clusters": 0 if self.clusters is None else self.clusters.k,
            "cluster_dense_weight": 0.0 if self.clusters is None else self.clusters.dense_weight,
            "tags": list(self.tags),
            "neighbours": None if self.neighbours is None else self.neighbours.meta(),
            "label_counts": {
                m: int(c) for m, c in zip(self.models, self.label_counts, strict=True)
            },
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Heads:
        """Validate and load; ValueError on anything wrong."""
        try:
            version = meta.get("version")
            if version not in HEADS_VERSIONS:
                raise ValueError(f"unsupported heads version {version!r}")
            models = meta["models"]
            if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
                raise ValueError("models must be a list of names")
            if len(set(models)) != len(models) or not models:
                raise ValueError("models must be distinct and non-empty")
            scalars = [float(meta[k]) for k in ("idf_default", "word_weight", "char_weight")]
            if not all(math.isfinite(v) and v >= 0 for v in scalars):
                raise ValueError("idf_default and block weights must be finite and >= 0")
            n_models = len(models)

            def arr(name: str, shape: tuple[int, ...], kind: str = "f") -> np.ndarray:
                a = np.asarray(arrays[name])
                if a.dtype.kind not in ("iu" if kind == "i" else "f"):
                    raise ValueError(f"{name} has dtype {a.dtype}")
                if a.shape != shape:
                    raise ValueError(f"{name} has shape {a.shape}, expected {shape}")
                if kind == "f" and not np.isfinite(a).all():
                    raise ValueError(f"{name} is not finite")
                return a

            ids = np.asarray(arrays["active_ids"])
            if ids.ndim != 1 or ids.dtype.kind not in "iu":
                raise ValueError("active_ids must be a 1-d integer array")
            n_active = ids.shape[0]
            ids = ids.astype(np.int64)
            if n_active and (ids[0] < 0 or ids[-1] >= N_BUCKETS or np.any(np.diff(ids) <= 0)):
                raise ValueError("active_ids must be sorted, distinct and in range")
            counts = arr("label_counts", (n_models,), "i").astype(np.int64)
            if counts.size and counts.min() < 0:
                raise ValueError("negative label count")
            scale = arr("dense_scale", (N_EXTRA,)).astype(np.float64)
            if np.any(scale <= 0):
                raise ValueError("dense_scale must be positive")
            k = 0 if version == 1 else meta.get("clusters", 0)
            if not isinstance(k, int) or isinstance(k, bool) or k < 0:
                raise ValueError("clusters must be a non-negative integer")
            clusters, cluster_w = None, None
            if k:
                dw = float(meta.get("cluster_dense_weight", 0.0))
                clusters = ClusterMap.from_arrays(arrays, k, dw)
                cluster_w = arr("cluster_w", (k, n_models)).astype(np.float64)
            tags = [] if version == 1 else meta.get("tags", [])
            if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
                raise ValueError("tags must be a list of non-empty strings")
            if len(set(tags)) != len(tags):
                raise ValueError("tags must be distinct")
            tag_w = arr("tag_w", (len(tags), n_models)).astype(np.float64) if tags else None
            nb_meta = meta.get("neighbours") if version == 3 else None
            neighbours = (
                None
                if nb_meta is None
                else Neighbours.from_arrays(arrays, nb_meta, n_active, n_models)
            )
            return cls(
                models=tuple(models),
                label_counts=counts,
                active_ids=ids,
                idf=arr("idf", (n_active,)).astype(np.float64),
                idf_default=scalars[0],
                sparse_w=arr("sparse_w", (n_active, n_models)).astype(np.float64),
                dense_mean=arr("dense_mean", (N_EXTRA,)).astype(np.float64),
                dense_scale=scale,
                dense_w=arr("dense_w", (N_EXTRA, n_models)).astype(np.float64),
                intercept=arr("intercept", (n_models,)).astype(np.float64),
                d_coef=arr("d_coef", (n_models,)).astype(np.float64),
                word_weight=scalars[1],
                char_weight=scalars[2],
                clusters=clusters,
                cluster_w=cluster_w,
                tags=tuple(tags),
                tag_w=tag_w,
                neighbours=neighbours,
            )
        except (KeyError, TypeError, AttributeError, OverflowError) as exc:
            raise ValueError(f"invalid heads: {exc!r}") from None
