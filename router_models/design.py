"""The learner's training-time design: labelled examples as a label matrix, the prior's
offsets and features in the kernel coordinates of the training prompts (scipy, training
only).

`build_design` turns `Example`s into a `Design`: the (n, M) labels and which pairs are
labelled, each model's prior logit as an exact affine function of the prior difficulty d,
the signatures' n-gram values (sublinear tf times idf over the buckets seen in at least
`min_df` prompts, each block l2-normalised) as coordinates Q sqrt(L) on the top `rank`
eigenpairs of the kernel K = X X^T, and the standardised dense features plus d. Up to
`exact_kernel_max` examples the eigenpairs come from the dense n x n kernel, beyond it
from a randomized truncated SVD of the sparse X (memory n x rank instead of n^2). The
basis maps the fitted coordinates back to bucket weights (`learner.heads_from_fit`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from router_models.clusters import CLIP
from router_models.irt import sigmoid
from router_models.signature import N_BUCKETS, WORD_BUCKETS

if TYPE_CHECKING:
    from router_models.learner import Example, LearnerParams, PriorLogit

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

# randomized SVD (more than exact_kernel_max examples): oversampled columns (its power
# iterations: LearnerParams.rsvd_iter)
RSVD_OVERSAMPLES = 30


@dataclass(frozen=True, slots=True)
class Design:
    """Training-time view of examples: label matrix, features in kernel coordinates."""

    models: tuple[str, ...]
    y: F64  # (n, M), 0 where unlabelled
    mask: npt.NDArray[np.bool_]  # (n, M)
    offset: F64  # (n, M) prior logit (affine in d)
    off_c: F64  # (M,)
    off_g: F64  # (M,)
    feats: F64  # (n, r + N_EXTRA)
    n_kernel: int
    phi_mean: F64  # (r,) subtracted from the kernel coordinates
    # mapping back to buckets
    x_active: Any  # scipy CSR (n, A)
    basis: F64  # (n, r) Q / sqrt(L)
    active_ids: I64
    idf: F64
    idf_default: float
    dense_mean: F64
    dense_scale: F64


def example_labels(
    examples: Sequence[Example],
) -> tuple[tuple[str, ...], F64, npt.NDArray[np.bool_]]:
    """(models in sorted order, (n, M) labels, (n, M) which pairs are labelled); ValueError
    for a label outside [0, 1]."""
    models = tuple(sorted({m for e in examples for m in e.labels}))
    index = {m: j for j, m in enumerate(models)}
    y = np.zeros((len(examples), len(models)))
    mask = np.zeros((len(examples), len(models)), dtype=bool)
    for i, e in enumerate(examples):
        for m, s in e.labels.items():
            v = float(s)
            if not (math.isfinite(v) and 0.0 <= v <= 1.0):
                raise ValueError(f"label {v!r} for {m!r} is not a score in [0, 1]")
            y[i, index[m]] = v
            mask[i, index[m]] = True
    return models, y, mask


def prior_of(prior: PriorLogit, model: str) -> Any:
    """The prior's logits of ``model`` on every example (array-like), or None for a model
    the prior does not know; ``prior`` a callable or a mapping."""
    return prior.get(model) if isinstance(prior, Mapping) else prior(model)


def prior_offsets(
    models: tuple[str, ...], y: F64, mask: npt.NDArray[np.bool_], d: F64, prior: PriorLogit
) -> tuple[F64, F64]:
    """Per model (c, g) with prior logit ~= c + g d (least squares; exact for IRT).

    A model the prior does not know gets the known models' mean slope (none known: one
    slope fitted on these models' labels, `pooled_slope`), and the intercept at which its
    mean P over its labelled prompts is the smoothed mean of its labels
    (`unknown_offsets`): the IRT form the prior would give it with a skill fitted to its
    labels, so that a model with a handful of labels still ranks prompts by difficulty."""
    c = np.zeros(len(models))
    g = np.zeros(len(models))
    design = np.column_stack([np.ones_like(d), d])
    known = np.zeros(len(models), dtype=bool)
    for j, m in enumerate(models):
        raw = prior_of(prior, m)
        if raw is None:
            continue
        val = np.asarray(raw, dtype=np.float64).reshape(-1)
        if val.shape != d.shape or not np.isfinite(val).all():
            raise ValueError(f"prior logit for {m!r} must be finite, one per example")
        coef = np.linalg.lstsq(design, val, rcond=None)[0]
        c[j], g[j] = float(coef[0]), float(coef[1])
        known[j] = True
    if not known.all():
        cols = (~known).nonzero()[0]
        slope = float(g[known].mean()) if known.any() else None
        c[cols], g[cols] = unknown_offsets(y[:, cols], mask[:, cols], d, slope)
    return c, g


def pooled_slope(y: F64, mask: npt.NDArray[np.bool_], d: F64) -> float:
    """The slope g of logit P = c_m + g d, one per model c_m and one g for all, fitted on
    every labelled pair of these models (soft-label log loss; a unit ridge on the c_m and
    on g per standard deviation of d, so labels that d separates give a finite slope); 0
    where the labelled prompts have no spread in d."""
    from scipy.optimize import minimize

    rows, cols = mask.nonzero()
    if rows.size == 0:
        return 0.0
    dd = d[rows]
    scale = float(dd.std())
    if not scale > 1e-12:
        return 0.0
    x = (dd - float(dd.mean())) / scale
    yy, m = y[rows, cols], y.shape[1]

    def loss(theta: F64) -> tuple[float, F64]:
        z = theta[cols] + theta[m] * x
        r = sigmoid(z) - yy
        f = float((np.logaddexp(0.0, z) - yy * z).sum()) + 0.5 * float(theta @ theta)
        grad = np.empty(m + 1)
        grad[:m] = np.bincount(cols, weights=r, minlength=m) + theta[:m]
        grad[m] = float(r @ x) + theta[m]
        return f, grad

    res = minimize(loss, np.zeros(m + 1), jac=True, method="L-BFGS-B")
    return float(res.x[m]) / scale


def unknown_offsets(
    y: F64, mask: npt.NDArray[np.bool_], d: F64, slope: float | None
) -> tuple[F64, F64]:
    """(c, g) for models the prior does not know (columns of y and mask): g = ``slope``
    (None: `pooled_slope` of these labels), and each model's c where its mean P over its
    labelled prompts (every prompt where it has none) is (sum of its labels + 1) / (their
    count + 2), by bisection."""
    g = pooled_slope(y, mask, d) if slope is None else float(slope)
    c = np.zeros(y.shape[1])
    for j in range(y.shape[1]):
        seen = mask[:, j]
        target = (float(y[seen, j].sum()) + 1.0) / (float(seen.sum()) + 2.0)
        gd = g * (d[seen] if seen.any() else d)
        if gd.size == 0:
            c[j] = math.log(target / (1.0 - target))
            continue
        lo, hi = -40.0 - float(gd.max()), 40.0 - float(gd.min())
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            if float(sigmoid(mid + gd).mean()) < target:
                lo = mid
            else:
                hi = mid
        c[j] = 0.5 * (lo + hi)
    return c, np.full(y.shape[1], g)


def build_design(
    examples: Sequence[Example],
    prior_difficulty: F64,
    prior_logit: PriorLogit,
    params: LearnerParams,
) -> Design:
    import scipy.linalg
    import scipy.sparse as sp

    n = len(examples)
    if n == 0:
        raise ValueError("no examples")
    d = np.asarray(prior_difficulty, dtype=np.float64).reshape(-1)
    if d.shape != (n,) or not np.isfinite(d).all():
        raise ValueError("prior_difficulty must be finite, one per example")
    models, y, mask = example_labels(examples)
    if not models:
        raise ValueError("no labels")
    c, g = prior_offsets(models, y, mask, d, prior_logit)
    offset = c[None, :] + d[:, None] * g[None, :]

    lens = np.array([e.sig.ids.size for e in examples])
    ids = np.concatenate([e.sig.ids for e in examples]) if lens.sum() else np.zeros(0, np.int64)
    cnt = np.concatenate([e.sig.counts for e in examples]) if lens.sum() else np.zeros(0)
    row = np.repeat(np.arange(n), lens)
    df = np.bincount(ids, minlength=N_BUCKETS)
    active_ids = np.flatnonzero(df >= max(params.min_df, 1)).astype(np.int64)
    idf_all = np.log((1.0 + n) / (1.0 + df)) + 1.0
    idf_default = float(math.log(1.0 + n) + 1.0)
    is_active = df >= max(params.min_df, 1)
    w = (1.0 + np.log(cnt)) * np.where(is_active[ids], idf_all[ids], idf_default)
    word = ids < WORD_BUCKETS
    sq = w * w
    nw = np.sqrt(np.bincount(row, weights=sq * word, minlength=n))
    nc = np.sqrt(np.bincount(row, weights=sq * ~word, minlength=n))
    nw[nw < 1e-12] = 1.0
    nc[nc < 1e-12] = 1.0
    w = w * np.where(word, params.word_weight / nw[row], params.char_weight / nc[row])
    lookup = np.full(N_BUCKETS, -1, dtype=np.int64)
    lookup[active_ids] = np.arange(active_ids.size)
    keep = lookup[ids] >= 0
    x_active = sp.csr_matrix((w[keep], (row[keep], lookup[ids[keep]])), shape=(n, active_ids.size))
    r = int(min(params.rank, n))
    if n <= params.exact_kernel_max:
        kern = (x_active @ x_active.T).toarray()
        vals, vecs = scipy.linalg.eigh(kern, subset_by_index=(n - r, n - 1))
    else:
        vals, vecs = _top_eigenpairs(x_active, r, params.rsvd_iter)
    good = vals > 1e-8 * max(float(vals.max()), 1e-12)
    vals, vecs = vals[good], vecs[:, good]
    # centred coordinates, so that u (shared) cannot act as a common intercept
    phi = vecs * np.sqrt(vals)[None, :]
    phi_mean = phi.mean(axis=0)
    phi = phi - phi_mean
    basis = vecs / np.sqrt(vals)[None, :]

    dense = np.column_stack([np.stack([e.sig.dense for e in examples]), d])
    mean = dense.mean(axis=0)
    sd = dense.std(axis=0)
    sd[sd < 1e-9] = 1.0
    z = np.clip((dense - mean) / sd, -CLIP, CLIP)
    return Design(
        models=models,
        y=y,
        mask=mask,
        offset=offset,
        off_c=c,
        off_g=g,
        feats=np.column_stack([phi, z]),
        n_kernel=phi.shape[1],
        phi_mean=phi_mean,
        x_active=x_active,
        basis=basis,
        active_ids=active_ids,
        idf=idf_all[active_ids],
        idf_default=idf_default,
        dense_mean=mean,
        dense_scale=sd,
    )


def _top_eigenpairs(x: Any, r: int, n_iter: int) -> tuple[F64, F64]:
    """The top ``r`` eigenpairs of X X^T, ascending as ``eigh`` gives them, without forming
    it: the squared singular values and left singular vectors of the sparse X (randomized
    SVD with ``n_iter`` power iterations, fixed seed: the same design for the same
    examples). scikit-learn normalises between iterations (LU) only above 2 of them."""
    from router_models.fit import sklearn_randomized_svd

    if min(x.shape) == 0:  # no active bucket: nothing to keep (as eigh's zeros give)
        return np.zeros(1), np.zeros((x.shape[0], 1))
    r = max(1, min(r, min(x.shape)))
    u, sv, _ = sklearn_randomized_svd()(
        x, n_components=r, n_oversamples=RSVD_OVERSAMPLES, n_iter=n_iter, random_state=0
    )
    return np.ascontiguousarray((sv * sv)[::-1]), np.ascontiguousarray(u[:, ::-1])


def truncate(design: Design, rank: int) -> Design:
    """The same design with only its top `rank` kernel coordinates (eigenvalues ascend)."""
    r = design.n_kernel
    keep = min(max(int(rank), 1), r)
    cols = np.r_[np.arange(r - keep, r), np.arange(r, design.feats.shape[1])]
    return replace(
        design,
        feats=design.feats[:, cols],
        n_kernel=keep,
        phi_mean=design.phi_mean[r - keep :],
        basis=design.basis[:, r - keep :],
    )
