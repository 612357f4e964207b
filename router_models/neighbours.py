"""Nearest-neighbour correction of the heads' probabilities (the learner's last stage).

A deployment repeats its workflows, and a request's closest labelled requests say which
models handled that kind of request, at a finer grain than the calibration stage's clusters.
`Neighbours` keeps up to `knn_max_refs` labelled training requests as an inverted index over
the heads' own n-gram representation (`Heads._x`: sublinear tf x idf, each block
l2-normalised, so a dot product is a cosine up to the block weights), without the buckets
found in more than `knn_max_df` of them (they cost the most and separate nothing). For a
request, its `k` most similar references (dot product > 0) give, per model, the sum of their
labels `s_m` and how many of them are labelled for m, `n_m`; the heads' P becomes

    P'_m = (s_m + alpha * P_m) / (n_m + alpha)

the neighbours' acceptance rate shrunk to the heads' P with a prior weight of `alpha`
pseudo-labels (a model with no labelled neighbour keeps P_m). `fit_neighbours` uses it only
when, on the training examples, the blend of out-of-fold probabilities with neighbours from
the other folds lowers the held-out log loss by more than two standard errors. The frequent
buckets left out are the calibration stage's domain: its workflow clusters are built from
exactly those (`cluster_min_df`); the neighbours add the finer grain of rarer n-grams.
Serving (numpy only): a gather of the request's postings, one bincount, one argpartition.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from router_models.heads import Heads
    from router_models.learner import Example, LearnerParams

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
EPS = 1e-6  # probabilities are clipped to [EPS, 1 - EPS] in the log loss


@dataclass(frozen=True, slots=True)
class Neighbours:
    """Inverted index of R labelled reference requests over the heads' A active buckets."""

    indptr: I64  # (A + 2,): postings of heads row j are refs[indptr[j]:indptr[j + 1]]
    refs: npt.NDArray[np.int32]  # (nnz,) reference index
    vals: F64  # (nnz,) the reference's value in that bucket
    y: F64  # (R, M) labels in [0, 1], 0 where unlabelled
    mask: F64  # (R, M) 1.0 where labelled
    k: int
    alpha: float

    @property
    def size(self) -> int:
        return int(self.y.shape[0])

    def sums(self, rows: npt.NDArray[np.integer[Any]], x: F64) -> tuple[F64, F64] | None:
        """(labels summed, labelled count) per model over the request's k nearest
        references; None when it shares no indexed bucket with any. ``rows``, ``x``: the
        request's heads rows (A for a bucket without weight) and values (`Heads._x`)."""
        start = self.indptr[rows]
        length = self.indptr[rows + 1] - start
        total = int(length.sum())
        if total == 0:
            return None
        ends = np.cumsum(length)
        at = np.arange(total) - np.repeat(ends - length - start, length)
        sim = np.bincount(
            self.refs[at], weights=self.vals[at] * np.repeat(x, length), minlength=self.size
        )
        k = min(self.k, self.size)
        near = np.argpartition(sim, self.size - k)[self.size - k :]
        near = near[sim[near] > 0.0]
        if near.size == 0:
            return None
        return self.y[near].sum(axis=0), self.mask[near].sum(axis=0)

    def blend(self, p: F64, rows: npt.NDArray[np.integer[Any]], x: F64) -> F64:
        got = self.sums(rows, x)
        if got is None:
            return p
        s, n = got
        out: F64 = (s + self.alpha * p) / (n + self.alpha)
        return out

    def subset(self, cols: npt.NDArray[np.intp]) -> Neighbours:
        return Neighbours(
            self.indptr,
            self.refs,
            self.vals,
            np.ascontiguousarray(self.y[:, cols]),
            np.ascontiguousarray(self.mask[:, cols]),
            self.k,
            self.alpha,
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "nb_indptr": self.indptr,
            "nb_refs": self.refs,
            "nb_vals": self.vals.astype(np.float32),
            "nb_y": self.y.astype(np.float32),
            "nb_mask": self.mask.astype(np.uint8),
        }

    def meta(self) -> dict[str, Any]:
        return {"k": self.k, "alpha": self.alpha, "references": self.size}

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, np.ndarray], meta: Any, n_active: int, n_models: int
    ) -> Neighbours:
        """Validate and load; ValueError on anything wrong."""
        if not isinstance(meta, Mapping):
            raise ValueError("neighbours must be an object")
        k, alpha = meta.get("k"), meta.get("alpha")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError("neighbours k must be a positive integer")
        if not isinstance(alpha, int | float) or isinstance(alpha, bool):
            raise ValueError("neighbours alpha must be a number")
        if not (math.isfinite(alpha) and alpha > 0):
            raise ValueError("neighbours alpha must be finite and positive")
        indptr = np.asarray(arrays["nb_indptr"])
        refs = np.asarray(arrays["nb_refs"])
        vals = np.asarray(arrays["nb_vals"])
        y = np.asarray(arrays["nb_y"])
        mask = np.asarray(arrays["nb_mask"])
        if indptr.dtype.kind not in "iu" or indptr.shape != (n_active + 2,):
            raise ValueError("nb_indptr must hold one integer per heads row, plus two")
        if refs.dtype.kind not in "iu" or refs.ndim != 1 or vals.shape != refs.shape:
            raise ValueError("nb_refs and nb_vals must be 1-d and the same length")
        if vals.dtype.kind != "f" or not np.isfinite(vals).all():
            raise ValueError("nb_vals must be finite numbers")
        if y.ndim != 2 or y.shape[1] != n_models or mask.shape != y.shape or y.shape[0] < 1:
            raise ValueError(
                "nb_y and nb_mask must have one row per reference, one column per model"
            )
        if y.dtype.kind != "f" or not np.isfinite(y).all() or y.min() < 0 or y.max() > 1:
            raise ValueError("nb_y must be labels in [0, 1]")
        if mask.dtype.kind not in "iub" or not np.isin(mask, (0, 1)).all():
            raise ValueError("nb_mask must be 0 or 1")
        ptr = indptr.astype(np.int64)
        if ptr[0] != 0 or ptr[-1] != refs.size or np.any(np.diff(ptr) < 0):
            raise ValueError("nb_indptr must rise from 0 to the number of postings")
        if ptr[-1] != ptr[-2]:
            raise ValueError("the padding row of nb_indptr must be empty")
        if refs.size and (int(refs.min()) < 0 or int(refs.max()) >= y.shape[0]):
            raise ValueError("nb_refs out of range")
        return cls(
            indptr=ptr,
            refs=refs.astype(np.int32),
            vals=vals.astype(np.float64),
            y=y.astype(np.float64) * (mask > 0),
            mask=mask.astype(np.float64),
            k=int(k),
            alpha=float(alpha),
        )


# ---------------------------------------------------------------- training (scipy)


def _matrix(heads: Heads, examples: Sequence[Example]) -> Any:
    """(n, A) CSR of the examples' values over the heads' active rows."""
    import scipy.sparse as sp

    a = heads.active_ids.size
    rows, cols, vals = [], [], []
    for i, e in enumerate(examples):
        r, x = heads._x(e.sig)
        keep = r < a
        cols.append(r[keep])
        vals.append(x[keep])
        rows.append(np.full(int(keep.sum()), i, dtype=np.int64))
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(examples), a),
    )


def _near_sums(sim: F64, k: int, y: F64, mask: F64) -> tuple[F64, F64]:
    """Per row of ``sim`` (queries x references; -inf: not a candidate): labels summed and
    labelled counts over its k most similar references with similarity > 0."""
    k = min(k, sim.shape[1])
    near = np.argpartition(sim, sim.shape[1] - k, axis=1)[:, sim.shape[1] - k :]
    ok = (np.take_along_axis(sim, near, axis=1) > 0.0)[:, :, None]
    return (y[near] * ok).sum(axis=1), (mask[near] * ok).sum(axis=1)


def knn_grid(params: LearnerParams) -> list[int]:
    """The neighbour counts to choose from (``params.knn``, comma-separated; "" or 0: off)."""
    out = []
    for part in str(params.knn).split(","):
        part = part.strip()
        if part and part != "0":
            k = int(part)
            if k < 1:
                raise ValueError(f"knn: {k} is not a neighbour count")
            out.append(k)
    return sorted(set(out))


def fit_neighbours(
    heads: Heads,
    examples: Sequence[Example],
    p_oof: F64,
    fold: I64,
    params: LearnerParams,
    seed: int = 0,
) -> tuple[Neighbours | None, dict[str, Any]]:
    """(the index, or None when it does not beat the heads; a report).

    ``p_oof``: (n, M) each example's P from heads that did not see its fold (``fold``), in
    ``heads.models`` order; ``params``: knn (the k to choose from), knn_alpha, knn_max_df,
    knn_max_refs. The k whose blend has the least held-out log loss is used when it beats
    the heads by more than two standard errors of that gain (taken over examples: an
    example's pairs share its neighbours)."""
    from router_models.design import example_labels

    n = len(examples)
    models, y, mask_b = example_labels(examples)
    if models != heads.models:
        raise ValueError("the heads were not fitted on these examples' models")
    mask = mask_b.astype(np.float64)
    report: dict[str, Any] = {"chosen": False}
    ks = knn_grid(params)
    if n < 2 or not ks:
        return None, report
    x = _matrix(heads, examples)
    # the references the index will hold (a seeded sample beyond knn_max_refs), and the
    # buckets it will index: validation searches exactly those
    keep = np.arange(n)
    if n > params.knn_max_refs:
        keep = np.sort(np.random.default_rng(seed).choice(n, params.knn_max_refs, replace=False))
    df = np.bincount(x[keep].indices, minlength=x.shape[1])
    indexed = df <= max(1.0, params.knn_max_df * keep.size)
    xi = x[:, np.flatnonzero(indexed)].tocsr()
    xt = xi[keep].T.tocsr()
    y_ref, mask_ref, fold_ref = y[keep], mask[keep], fold[keep]  # y: 0 where unlabelled
    sums = {k: (np.zeros_like(p_oof), np.zeros_like(p_oof)) for k in ks}
    for lo in range(0, n, 1000):
        hi = min(n, lo + 1000)
        sim = (xi[lo:hi] @ xt).toarray()
        sim[fold[lo:hi, None] == fold_ref[None, :]] = -np.inf  # other folds' references only
        for k in ks:
            sums[k][0][lo:hi], sums[k][1][lo:hi] = _near_sums(sim, k, y_ref, mask_ref)
    a = params.knn_alpha

    def loss(p: F64) -> F64:
        """(n, M) log loss of each labelled pair, 0 elsewhere."""
        q = np.clip(p, EPS, 1 - EPS)
        out: F64 = -(y * np.log(q) + (1 - y) * np.log(1 - q)) * mask
        return out

    base = loss(p_oof)
    pairs = max(int(mask_b.sum()), 1)
    report["log_loss"] = {"heads": round(float(base.sum()) / pairs, 6)}
    best_k, best_gain, best_se = 0, 0.0, math.inf
    for k in ks:
        s, c = sums[k]
        gain = base - loss((s + a * p_oof) / (c + a))  # (n, M), 0 where unlabelled
        report["log_loss"][f"k={k}"] = round(float((base - gain).sum()) / pairs, 6)
        # an example's pairs share its neighbours: the standard error is over examples
        per = gain.sum(axis=1)
        mean = float(per.sum()) / pairs
        if mean > best_gain:  # n >= 2 here
            best_k, best_gain = k, mean
            best_se = float(per.std(ddof=1) * math.sqrt(n)) / pairs
    # the smallest k wins ties; a blend must beat the heads by two standard errors (the
    # best of several candidates beats one standard error by chance too often)
    if not best_k or not best_gain > 2.0 * best_se:
        return None, report
    ref = x[keep].multiply(indexed[None, :].astype(np.float64))
    by_row = ref.tocsc()
    by_row.eliminate_zeros()
    by_row.sort_indices()
    indptr = np.append(by_row.indptr, by_row.indptr[-1]).astype(np.int64)
    report["chosen"] = f"k={best_k}"
    report["references"] = int(keep.size)
    return (
        Neighbours(
            indptr=indptr,
            refs=by_row.indices.astype(np.int32),
            vals=by_row.data.astype(np.float64),
            y=y_ref,
            mask=mask_ref,
            k=best_k,
            alpha=float(a),
        ),
        report,
    )
