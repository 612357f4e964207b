"""Workflow clusters of requests: spherical k-means on a signature's n-grams and structure.

A deployment's traffic is a handful of workflows repeated (a summariser, a coder, a
classifier...), and which model succeeds often depends on the workflow as a whole more than
on any one word. `fit_clusters` groups training signatures by spherical k-means (cosine
similarity, k-means++ starts, the best of a few restarts) over

- the presence of the n-gram buckets seen in at least `min_df` of the training prompts
  (templates and recurring phrasing, not rare content words), l2-normalised, and
- the 37 standardised structure features (length, lines, code, options, ...), scaled by
  ``dense_weight / sqrt(37)``;

and `ClusterMap.assign` puts a request in the cluster of its most similar centroid. The
calibration stage (`router_models.calibration`) gives each model a shift per cluster.
Serving is numpy only: a sorted-id lookup, one gather and two small products.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from router_models.features import N_DENSE
from router_models.signature import N_BUCKETS, Signature

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
CLIP = 5.0  # standardised dense features are clipped at +-CLIP (the heads too)


def narrowest(a: npt.NDArray[np.floating[Any]]) -> type[np.floating[Any]]:
    """float32 when every value of ``a`` is one (weights read from an artifact, which stores
    them as float32), else float64. A per-request gather of rows from a table stored this
    way touches half the memory; the gathered rows are widened to float64 before the
    product, which then gives the same result to the bit."""
    with np.errstate(over="ignore"):  # a value past float32's range is not one
        return np.float32 if np.array_equal(a.astype(np.float32), a) else np.float64


@dataclass(frozen=True, slots=True)
class ClusterMap:
    """K centroids over `ids` (sorted bucket ids) and the standardised dense features."""

    ids: I64  # (B,) sorted, distinct bucket ids the centroids read
    centroids: F64  # (B, K)
    dense_centroids: F64  # (N_DENSE, K)
    dense_mean: F64  # (N_DENSE,)
    dense_scale: F64  # (N_DENSE,)
    dense_weight: float
    # per-request tables: bucket -> centroid row (-1 for a bucket the centroids do not read),
    # as narrow as the sizes allow, and the centroids as float32 where that is exact
    _lookup: npt.NDArray[np.signedinteger[Any]] = field(init=False, repr=False, compare=False)
    _rows: npt.NDArray[np.floating[Any]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        small = self.ids.size - 1 <= np.iinfo(np.int16).max  # rows 0 .. B - 1, and -1
        lookup = np.full(N_BUCKETS, -1, dtype=np.int16 if small else np.int32)
        lookup[self.ids] = np.arange(self.ids.size)
        object.__setattr__(self, "_lookup", lookup)
        rows = np.ascontiguousarray(self.centroids, dtype=narrowest(self.centroids))
        object.__setattr__(self, "_rows", rows)

    @property
    def k(self) -> int:
        return int(self.centroids.shape[1])

    def assign(self, sig: Signature) -> int:
        """The cluster whose centroid is most similar to this request."""
        rows = self._lookup[sig.ids]
        rows = rows[rows >= 0]
        # np.clip, np.full and np.argmax spelled as the ufuncs and methods they wrap
        z = sig.dense - self.dense_mean
        z /= self.dense_scale
        np.minimum(np.maximum(z, -CLIP, out=z), CLIP, out=z)
        sims = z @ self.dense_centroids
        sims *= self.dense_weight / math.sqrt(N_DENSE)
        if rows.size:  # the unit binary vector times the centroids: one gather, one gemv
            unit = np.empty(rows.size)
            unit.fill(1.0 / math.sqrt(rows.size))
            sims += unit @ self._rows.take(rows, axis=0).astype(np.float64, copy=False)
        return int(sims.argmax())

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "cluster_ids": self.ids,
            "cluster_centroids": self.centroids.astype(np.float32),
            "cluster_dense_centroids": self.dense_centroids,
            "cluster_dense_mean": self.dense_mean,
            "cluster_dense_scale": self.dense_scale,
        }

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, np.ndarray], k: int, dense_weight: float
    ) -> ClusterMap:
        """Validate and load; ValueError on anything wrong."""
        ids = np.asarray(arrays["cluster_ids"])
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise ValueError("cluster_ids must be a 1-d integer array")
        ids = ids.astype(np.int64)
        if ids.size and (ids[0] < 0 or ids[-1] >= N_BUCKETS or np.any(np.diff(ids) <= 0)):
            raise ValueError("cluster_ids must be sorted, distinct and in range")
        if not (math.isfinite(dense_weight) and dense_weight >= 0):
            raise ValueError("cluster dense weight must be finite and >= 0")
        out = {}
        for name, shape in (
            ("cluster_centroids", (ids.size, k)),
            ("cluster_dense_centroids", (N_DENSE, k)),
            ("cluster_dense_mean", (N_DENSE,)),
            ("cluster_dense_scale", (N_DENSE,)),
        ):
            a = np.asarray(arrays[name])
            if a.dtype.kind != "f" or a.shape != shape or not np.isfinite(a).all():
                raise ValueError(f"{name} must be finite floats of shape {shape}")
            out[name] = a.astype(np.float64)
        if np.any(out["cluster_dense_scale"] <= 0):
            raise ValueError("cluster_dense_scale must be positive")
        return cls(
            ids=ids,
            centroids=out["cluster_centroids"],
            dense_centroids=out["cluster_dense_centroids"],
            dense_mean=out["cluster_dense_mean"],
            dense_scale=out["cluster_dense_scale"],
            dense_weight=float(dense_weight),
        )


# ---------------------------------------------------------------- training (scipy)


def _unit_rows(x: Any) -> Any:
    """The rows of a CSR matrix scaled to unit l2 norm (empty rows stay empty)."""
    import scipy.sparse as sp

    norm = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).reshape(-1))
    norm[norm < 1e-12] = 1.0
    return sp.diags(1.0 / norm) @ x


def _unit_columns(c: F64) -> F64:
    norm = np.sqrt((c * c).sum(axis=0))
    norm[norm < 1e-12] = 1.0
    out: F64 = c / norm[None, :]
    return out


def _plus_plus(x: Any, k: int, rng: np.random.Generator) -> F64:
    """k-means++ starts under cosine distance 1 - x . c: (columns, k) unit columns."""
    n = x.shape[0]
    first = int(rng.integers(n))
    cents = [np.asarray(x[first].toarray()).reshape(-1)]
    best_sim = np.asarray(x @ cents[0]).reshape(-1)
    for _ in range(1, k):
        dist = np.clip(1.0 - best_sim, 0.0, None)
        total = float(dist.sum())
        pick = int(rng.integers(n)) if total <= 1e-12 else int(rng.choice(n, p=dist / total))
        c = np.asarray(x[pick].toarray()).reshape(-1)
        cents.append(c)
        best_sim = np.maximum(best_sim, np.asarray(x @ c).reshape(-1))
    return _unit_columns(np.column_stack(cents))


def spherical_kmeans(
    x: Any, k: int, seed: int = 0, iters: int = 30, restarts: int = 3
) -> tuple[F64, I64]:
    """(centroids (columns, k) with unit columns, each row's cluster) of the rows of CSR
    ``x`` (unit-normalised here), maximising the summed cosine similarity of rows to their
    centroid; the best of ``restarts`` k-means++ starts. k is capped at the number of rows.
    Deterministic for a seed. An empty cluster takes the row least similar to its own."""
    xu = _unit_rows(x.tocsr())
    n = xu.shape[0]
    k = max(1, min(int(k), n))
    rng = np.random.default_rng(seed)
    best: tuple[float, F64, I64] | None = None
    rows = np.arange(n)
    for _ in range(max(1, restarts)):
        cents = _plus_plus(xu, k, rng)
        assign = np.full(n, -1, dtype=np.int64)
        for _ in range(iters):
            sims = np.asarray(xu @ cents)
            new = np.argmax(sims, axis=1).astype(np.int64)
            for empty in np.flatnonzero(np.bincount(new, minlength=k) == 0):
                own = sims[rows, new]
                own[np.bincount(new, minlength=k)[new] <= 1] = np.inf  # keep singletons
                new[int(np.argmin(own))] = empty
            if np.array_equal(new, assign):
                break
            assign = new
            member = np.zeros((n, k))
            member[rows, assign] = 1.0
            cents = _unit_columns(np.asarray(xu.T @ member))
        score = float(np.asarray(xu @ cents)[rows, assign].sum())
        if best is None or score > best[0] + 1e-9:
            best = (score, cents, assign)
    assert best is not None
    return best[1], best[2]


def fit_clusters(
    sigs: Sequence[Signature],
    k: int,
    *,
    min_df: int,
    dense_weight: float = 0.5,
    seed: int = 0,
) -> ClusterMap:
    """Spherical k-means of the signatures (see the module docstring); k is capped at the
    number of signatures."""
    import scipy.sparse as sp

    n = len(sigs)
    if n == 0:
        raise ValueError("no signatures to cluster")
    lens = np.array([s.ids.size for s in sigs])
    all_ids = np.concatenate([s.ids for s in sigs]) if lens.sum() else np.zeros(0, np.int64)
    df = np.bincount(all_ids, minlength=N_BUCKETS)
    kept = np.flatnonzero(df >= max(int(min_df), 1)).astype(np.int64)
    col = np.full(N_BUCKETS, -1, dtype=np.int64)
    col[kept] = np.arange(kept.size)
    row = np.repeat(np.arange(n), lens)
    hit = col[all_ids] >= 0
    binary = sp.csr_matrix(
        (np.ones(int(hit.sum())), (row[hit], col[all_ids[hit]])), shape=(n, kept.size)
    )
    dense = np.stack([s.dense for s in sigs])
    mean = dense.mean(axis=0)
    scale = dense.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = np.clip((dense - mean) / scale, -CLIP, CLIP) * (dense_weight / math.sqrt(N_DENSE))
    x = sp.hstack([_unit_rows(binary), sp.csr_matrix(z)]).tocsr()
    cents, _ = spherical_kmeans(x, k, seed)
    return ClusterMap(
        ids=kept,
        centroids=np.ascontiguousarray(cents[: kept.size]),
        dense_centroids=np.ascontiguousarray(cents[kept.size :]),
        dense_mean=mean,
        dense_scale=scale,
        dense_weight=float(dense_weight),
    )
