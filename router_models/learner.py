"""Per-deployment learning: calibrated per-model P(acceptable) from partial labels.

From labelled requests (a `Signature`, and scores in [0, 1] for whichever models served it)
`fit_heads` fits one logistic head per model on the same features,

    logit_m(x) = prior_m(d) + b_m + phi(x) . (u + v_m)

- `prior_m(d)`: the shipped estimator's logit a * (s_m - d), refitted exactly as an affine
  function of the prior difficulty d (a model the prior does not know gets the same form,
  the known models' slope and the intercept of its smoothed label mean,
  `design.prior_offsets`): the offset every head starts from;
- `phi(x)`: the signature's hashed word and character n-grams (sublinear tf times idf,
  each block l2-normalised) and its standardised dense features plus d;
- `u` is shared by all models (what makes a prompt harder or easier for everyone), taken
  by model m with weight n_m / (n_m + shared_n0) (n_m its labels: a model with few labels
  stays near its prior); `v_m` is model m's own deviation (which model succeeds where
  another fails), penalised more strongly than `u` (and `dense_model_factor` times more
  on the dense coefficients), so a model with many labels moves;
- with model_covariance="corr" the v_m are coupled: their penalty is
  sum_k V_k Omega^-1 V_k^T with Omega the models' correlation of residual labels
  y - sigmoid(prior) on co-labelled prompts (shrunk by n / (n + cov_n0), eigenvalues
  floored at cov_floor), so a model with few labels borrows the deviation of models it is
  correlated with (see docs/learner.md);
- with select=1, rank and lam_model come from `SELECT_GRID` by grouped inner CV (held-out
  log loss on the training examples only).

Training (scipy, at fit time only) works in the span of the training prompts
(`router_models.design`): the n-gram kernel K = X X^T gives coordinates Q sqrt(L) (its top
`rank` eigenpairs), which makes the penalised fit the same as the primal one restricted to
those directions, at a cost that does not grow with the number of n-grams; the weights are
mapped back to n-gram buckets afterwards. Up to `exact_kernel_max` examples the eigenpairs
come from the dense n x n kernel; beyond, from a randomized truncated SVD of the sparse X
itself (scikit-learn's `randomized_svd`, the same top singular pairs to within its power
iterations), so memory grows as n x rank rather than n^2 (30,000 records would need 7 GB for
the kernel alone). The calibration stage (`router_models.calibration`) runs after the fit:
it first scales back the heads' departure from the prior where they lose to the prior on
out-of-fold log loss (few labels, traffic the features do not separate), then fits its
scale, shift and workflow shifts. Serving is `router_models.heads.Heads` (numpy only: a
gather and two dot products).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from router_models.design import Design, build_design, prior_of, truncate
from router_models.heads import Heads, logistic
from router_models.signature import Signature, signature

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

PriorLogit = Callable[[str], "npt.ArrayLike | None"] | Mapping[str, "npt.ArrayLike"]


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled request: its signature, scores of the models that served it, a group
    (task, tenant, ...) for grouped validation, and the workflow tag the client sent with
    it (``x-effgate-task`` or ``metadata.task``; "" for none)."""

    sig: Signature
    labels: Mapping[str, float]
    group: str = ""
    tag: str = ""


@dataclass(frozen=True, slots=True)
class LearnerParams:
    rank: int = 200  # kernel eigenpairs kept (<= training prompts)
    lam_shared: float = 0.5  # penalty on u (1 / C in scikit-learn terms)
    lam_model: float = 2.0  # penalty on each v_m
    dense_penalty: float = 4.0  # multiplies both penalties on the dense coefficients
    dense_model_factor: float = 10.0  # multiplies the v_m penalty on dense coefficients again
    lam_bias: float = 5.0  # penalty on b_m, each model's shift from its prior
    model_covariance: str = "corr"  # "corr": couple the v_m by the models' correlation; "none"
    cov_n0: float = 50.0  # co-labelled prompts at which a correlation counts half
    cov_floor: float = 0.3  # smallest eigenvalue of the model correlation used
    shared_n0: float = 50.0  # labels at which a model takes half of the shared u
    word_weight: float = 1.0
    char_weight: float = 1.0
    min_df: int = 2  # n-gram buckets seen in fewer training prompts get no weight
    # more examples than this: kernel eigenpairs by randomized SVD, not the dense n x n kernel
    exact_kernel_max: int = 5000
    # the randomized SVD's power iterations: 2, not scikit-learn's 7, gave the same held-out
    # log loss at 8,000 examples (0.5309 against 0.5310) and a fit at 10,000 in 138 s instead
    # of 222 s, run side by side (docs/learner.md, "Training at scale"); at 2 or fewer
    # scikit-learn also skips its LU normalising between iterations
    rsvd_iter: int = 2
    max_iter: int = 400
    select: int = 0  # 1: pick rank x lam_model from SELECT_GRID by inner grouped CV
    select_folds: int = 3
    # the calibration stage (router_models.calibration): folds of its out-of-fold logits
    # (0: off), the cluster counts it chooses from, and its penalties
    calibrate: int = 5
    cluster_grid: str = "16,32"
    cluster_min_df: float = 0.01  # n-gram buckets in this share of prompts shape clusters
    cluster_dense_weight: float = 0.5
    lam_calibrate: float = 20.0  # pulls each model's (scale, shift) to (1, 0)
    lam_cluster: float = 5.0  # pulls each model's cluster shifts to 0
    # where the heads lose to the prior: their departure from it, shared and per-model parts,
    # scaled by betas in {0, 1/s, ..., 1} on out-of-fold log loss (s = prior_shrink; <= 0: off)
    prior_shrink: int = 10
    # the nearest-neighbour stage (router_models.neighbours; needs calibrate), off by
    # default (it costs ~0.1 ms per request; docs/learner.md): the neighbour counts it
    # chooses from (e.g. "10,20"; "0": off), the heads' P's weight in pseudo-labels, the
    # share of references a bucket may be in and still be indexed, the references kept
    knn: str = "0"
    knn_alpha: float = 40.0
    knn_max_df: float = 0.05
    knn_max_refs: int = 4000


SELECT_MAX_ITER = 200  # L-BFGS iterations of each inner-CV fit
SELECT_GRID: tuple[tuple[int, float], ...] = tuple(
    (r, lam) for r in (100, 200, 400) for lam in (1.0, 2.0, 4.0)
)


# ---------------------------------------------------------------- training (scipy)


def examples_from_rows(rows: Sequence[Any], tags: bool = False) -> list[Example]:
    """`router_models.data.Row`s -> Examples (signature of the row's messages, group = task;
    with ``tags``, the task is also the workflow tag, as if clients sent it)."""
    return [
        Example(
            sig=signature(list(r.messages)),
            labels={m: float(res.score) for m, res in r.results.items()},
            group=str(r.task),
            tag=str(r.task) if tags else "",
        )
        for r in rows
    ]


def prior_from_estimator(skills: Mapping[str, float], a: float, difficulty: F64) -> PriorLogit:
    """The shipped estimator's logits a * (s_m - d) over `difficulty`; None for unknown m."""
    d = np.asarray(difficulty, dtype=np.float64)

    def logit(model: str) -> F64 | None:
        s = skills.get(model)
        return None if s is None else a * (float(s) - d)

    return logit


def model_correlation(
    y: F64, mask: npt.NDArray[np.bool_], offset: F64, n0: float, floor: float
) -> F64:
    """(M, M) correlation of the models' residual labels y - sigmoid(prior) over the prompts
    both labelled, each shrunk toward 0 by n / (n + n0) (n co-labelled prompts), then made
    positive definite (eigenvalues >= `floor`) with a unit diagonal."""
    n_models = y.shape[1]
    m = mask.astype(np.float64)
    e = (y - logistic(offset)) * m
    n = m.T @ m
    s1 = e.T @ m  # s1[a, b]: sum of a's residuals where a and b are both labelled
    s2 = (e * e).T @ m
    s11 = e.T @ e
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_a = s1 / n
        mean_b = mean_a.T
        var_a = s2 / n - mean_a * mean_a
        var_b = var_a.T
        cov = s11 / n - mean_a * mean_b
        corr = cov / np.sqrt(var_a * var_b)
    ok = (n >= 3) & (var_a > 1e-9) & (var_b > 1e-9) & np.isfinite(corr)
    corr = np.where(ok, np.clip(corr, -1.0, 1.0), 0.0) * (n / (n + max(n0, 0.0)))
    corr = 0.5 * (corr + corr.T)
    np.fill_diagonal(corr, 1.0)
    vals, vecs = np.linalg.eigh(corr)
    vals = np.maximum(vals, min(max(floor, 1e-3), 1.0))
    c = (vecs * vals[None, :]) @ vecs.T
    dg = 1.0 / np.sqrt(np.diag(c))
    out: F64 = c * dg[:, None] * dg[None, :]
    assert out.shape == (n_models, n_models)
    return out


# the loss is taken model by model over labelled rows only when at most this share of the
# (example, model) cells is labelled (traffic's records: mostly the serving model's label)
# and the per-model copies of the features it needs hold at most BY_MODEL_MAX_COPIES times
# the features' own size
BY_MODEL_MAX_DENSITY = 0.25
BY_MODEL_MAX_COPIES = 4


def _data_term(
    feats: F64, y: F64, mask: npt.NDArray[np.bool_], offset: F64, by_model: bool | None
) -> Callable[[F64, F64], tuple[float, F64, F64]]:
    """``term(b, w) -> (loss, dloss/db, dloss/dw)`` of the masked soft-label log loss of
    offset + b_m + feats . w_m: over the whole (examples x models) matrix, or (``by_model``)
    over each model's labelled rows, whose features are copied once so that an evaluation
    costs (labels x features) instead of (examples x models x features). The same values
    either way, up to the order of the sums."""
    n, n_models = y.shape
    labelled = int(mask.sum())
    if by_model is None:
        by_model = (
            labelled <= BY_MODEL_MAX_DENSITY * n * n_models and labelled <= BY_MODEL_MAX_COPIES * n
        )
    if by_model:
        parts = []
        for j in range(n_models):
            rows = np.flatnonzero(mask[:, j])
            parts.append((j, feats[rows], y[rows, j], offset[rows, j]))  # copies

        def sparse_term(b: F64, w: F64) -> tuple[float, F64, F64]:
            f = 0.0
            r_sum = np.zeros(n_models)
            gr = np.zeros((feats.shape[1], n_models))
            for j, fj, yj, oj in parts:
                if not yj.size:
                    continue
                z = oj + b[j] + fj @ w[:, j]
                f += float((np.logaddexp(0.0, z) - yj * z).sum())
                r = logistic(z) - yj
                r_sum[j] = r.sum()
                gr[:, j] = fj.T @ r
            return f, r_sum, gr

        return sparse_term
    wmask = mask.astype(np.float64)

    def dense_term(b: F64, w: F64) -> tuple[float, F64, F64]:
        z = offset + b[None, :] + feats @ w
        # soft-label log loss: log(1 + e^z) - y z, stable
        ll = np.logaddexp(0.0, z) - y * z
        r = (logistic(z) - y) * wmask
        return float((ll * wmask).sum()), r.sum(axis=0), feats.T @ r

    return dense_term


@dataclass(frozen=True, slots=True)
class Fit:
    b: F64  # (M,)
    u: F64  # (p,)
    v: F64  # (p, M)
    share: F64  # (M,) how much of u each model takes
    theta: F64  # the optimiser's vector (warm starts)

    def weights(self) -> F64:
        w: F64 = self.u[:, None] * self.share[None, :] + self.v
        return w


def fit_core(
    feats: F64,
    y: F64,
    mask: npt.NDArray[np.bool_],
    offset: F64,
    n_kernel: int,
    params: LearnerParams,
    theta0: F64 | None = None,
    by_model: bool | None = None,
) -> Fit:
    """Minimise the masked soft-label log loss of offset + b_m + f . (s_m u + v_m) plus
    0.5 lam_bias |b|^2 + 0.5 sum_k pen_u,k u_k^2 + 0.5 sum_k pen_v,k V_k Omega^-1 V_k^T,
    with s_m = n_m / (n_m + shared_n0) and Omega the models' residual correlation
    (`model_correlation`; the identity with model_covariance="none"). ``by_model``: the
    loss over each model's labelled rows only (`_data_term`); None chooses by how sparse the
    labels are."""
    from scipy.optimize import minimize

    n, p = feats.shape
    n_models = y.shape[1]
    pen = np.ones(p)
    pen[n_kernel:] = params.dense_penalty
    pen_u = params.lam_shared * pen
    pen_v = params.lam_model * pen
    pen_v[n_kernel:] *= params.dense_model_factor
    counts = mask.sum(axis=0).astype(np.float64)
    n0 = max(params.shared_n0, 0.0)
    share = counts / (counts + n0) if n0 > 0 else np.ones(n_models)
    if params.model_covariance == "corr":
        prec = np.linalg.inv(model_correlation(y, mask, offset, params.cov_n0, params.cov_floor))
        prec = 0.5 * (prec + prec.T)
    elif params.model_covariance == "none":
        prec = np.eye(n_models)
    else:
        raise ValueError(
            f"model_covariance must be 'corr' or 'none', not {params.model_covariance!r}"
        )

    def unpack(theta: F64) -> tuple[F64, F64, F64]:
        b = theta[:n_models]
        u = theta[n_models : n_models + p]
        v = theta[n_models + p :].reshape(p, n_models)
        return b, u, v

    data_term = _data_term(feats, y, mask, offset, by_model)

    def loss(theta: F64) -> tuple[float, F64]:
        b, u, v = unpack(theta)
        f, r_sum, gr = data_term(b, u[:, None] * share[None, :] + v)
        vp = v @ prec
        f += 0.5 * params.lam_bias * float(b @ b)
        f += 0.5 * float(pen_u @ (u * u)) + 0.5 * float((pen_v[:, None] * v * vp).sum())
        grad = np.concatenate(
            [
                r_sum + params.lam_bias * b,
                gr @ share + pen_u * u,
                (gr + pen_v[:, None] * vp).ravel(),
            ]
        )
        return f, grad

    size = n_models + p + p * n_models
    start = theta0 if theta0 is not None and theta0.shape == (size,) else np.zeros(size)
    res = minimize(
        loss,
        start,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": params.max_iter, "gtol": 1e-5},
    )
    theta = np.asarray(res.x, dtype=np.float64)
    b, u, v = unpack(theta)
    return Fit(b=b, u=u, v=v, share=share, theta=theta)


def heads_from_fit(design: Design, fit: Fit, params: LearnerParams) -> Heads:
    w = fit.weights()  # (p, M)
    r = design.n_kernel
    sparse_w = np.asarray(design.x_active.T @ (design.basis @ w[:r]))
    return Heads(
        models=design.models,
        label_counts=design.mask.sum(axis=0).astype(np.int64),
        active_ids=design.active_ids,
        idf=design.idf,
        idf_default=design.idf_default,
        sparse_w=sparse_w,
        dense_mean=design.dense_mean,
        dense_scale=design.dense_scale,
        dense_w=w[r:],
        intercept=design.off_c + fit.b - design.phi_mean @ w[:r],
        d_coef=design.off_g,
        word_weight=params.word_weight,
        char_weight=params.char_weight,
    )


def fold_ids(examples: Sequence[Example], folds: int, seed: int) -> I64:
    """Grouped folds by `Example.group` (per example with fewer groups than folds)."""
    rng = np.random.default_rng(seed)
    groups = sorted({e.group for e in examples})
    if len(groups) >= folds:
        order = rng.permutation(len(groups))
        of_group = {groups[int(g)]: k % folds for k, g in enumerate(order)}
        return np.array([of_group[e.group] for e in examples], dtype=np.int64)
    return (rng.permutation(len(examples)) % folds).astype(np.int64)


def prior_subset(prior: PriorLogit, idx: I64) -> PriorLogit:
    def logit(model: str) -> F64 | None:
        raw = prior_of(prior, model)
        if raw is None:
            return None
        out: F64 = np.asarray(raw, dtype=np.float64).reshape(-1)[idx]
        return out

    return logit


def select_params(
    examples: Sequence[Example],
    prior_difficulty: F64,
    prior_logit: PriorLogit,
    params: LearnerParams = LearnerParams(),
    seed: int = 0,
    grid: Sequence[tuple[int, float]] = SELECT_GRID,
) -> tuple[LearnerParams, dict[tuple[int, float], float]]:
    """(params with the grid's (rank, lam_model) of least held-out log loss, and the mean
    held-out log loss per grid point) by grouped `select_folds`-fold CV on `examples`
    only. Ties keep the earlier grid point; deterministic for a given seed."""
    d = np.asarray(prior_difficulty, dtype=np.float64).reshape(-1)
    if d.shape != (len(examples),):
        raise ValueError("prior_difficulty must be finite, one per example")
    fold = fold_ids(examples, max(2, params.select_folds), seed)
    ranks = sorted({int(r) for r, _ in grid})
    total = dict.fromkeys(grid, 0.0)
    count = 0
    for k in range(int(fold.max()) + 1):
        tr = np.flatnonzero(fold != k).astype(np.int64)
        te = np.flatnonzero(fold == k).astype(np.int64)
        if tr.size == 0 or te.size == 0:
            continue
        train = [examples[int(i)] for i in tr]
        full = build_design(
            train, d[tr], prior_subset(prior_logit, tr), replace(params, rank=max(ranks))
        )
        cols = {m: j for j, m in enumerate(full.models)}
        y_te, m_te = [], []
        for i in te:
            yy = np.zeros(len(full.models))
            mm = np.zeros(len(full.models), dtype=bool)
            for name, val in examples[int(i)].labels.items():
                j = cols.get(name)
                if j is not None:
                    yy[j], mm[j] = float(val), True
            y_te.append(yy)
            m_te.append(mm)
        yt, mt = np.array(y_te), np.array(m_te)
        count += int(mt.sum())
        for r in ranks:
            design = truncate(full, r)
            theta: F64 | None = None
            for lam in sorted(lam for rr, lam in grid if int(rr) == r):
                # warm-started from the previous (weaker) penalty: fewer iterations suffice
                p2 = replace(params, rank=r, lam_model=lam, select=0)
                p2 = replace(p2, max_iter=min(params.max_iter, SELECT_MAX_ITER))
                fit = fit_core(
                    design.feats, design.y, design.mask, design.offset, design.n_kernel, p2, theta
                )
                theta = fit.theta
                heads = heads_from_fit(design, fit, p2)
                z = np.stack([heads.logits(examples[int(i)].sig, float(d[i])) for i in te])
                ll = (np.logaddexp(0.0, z) - yt * z) * mt
                total[next(g for g in grid if int(g[0]) == r and g[1] == lam)] += float(ll.sum())
    scores = {g: total[g] / max(count, 1) for g in grid}
    best = min(grid, key=lambda g: (scores[g], grid.index(g)))
    return replace(params, rank=int(best[0]), lam_model=float(best[1]), select=0), scores


def check_knn(params: LearnerParams) -> None:
    """ValueError for a neighbour stage that could not be used or loaded."""
    from router_models.neighbours import knn_grid

    if not knn_grid(params):
        return
    if not params.calibrate:
        raise ValueError("knn needs the calibration stage (calibrate > 0)")
    if params.knn_max_refs < 1:
        raise ValueError("knn_max_refs must be at least 1")
    if not (math.isfinite(params.knn_alpha) and params.knn_alpha > 0):
        raise ValueError("knn_alpha must be finite and positive")
    if not (math.isfinite(params.knn_max_df) and params.knn_max_df > 0):
        raise ValueError("knn_max_df must be finite and positive")


def fit_heads(
    examples: Sequence[Example],
    prior_difficulty: F64,
    prior_logit: PriorLogit,
    params: LearnerParams = LearnerParams(),
    seed: int = 0,
) -> Heads:
    """Fit per-model heads on (partially) labelled examples; see the module docstring.

    `prior_logit(model)` (or a mapping) gives the prior's logit of that model on every
    example, or None for a model the prior does not know. With `params.select`, rank and
    lam_model are first chosen by `select_params` (its folds drawn with `seed`); otherwise
    `seed` is unused (the fit is deterministic)."""
    return fit_heads_reported(examples, prior_difficulty, prior_logit, params, seed)[0]


def fit_heads_reported(
    examples: Sequence[Example],
    prior_difficulty: F64,
    prior_logit: PriorLogit,
    params: LearnerParams = LearnerParams(),
    seed: int = 0,
) -> tuple[Heads, dict[str, Any]]:
    """As `fit_heads`, plus what the fit chose: ``rank`` and ``lam_model`` (``select``),
    and with the calibration stage ``beta`` (the heads' departure from the prior kept,
    `calibration.shrink_to_prior`), ``calibration`` (the stage's candidate) and
    ``neighbours`` (k, or 0)."""
    check_knn(params)
    if params.select:
        params, _ = select_params(examples, prior_difficulty, prior_logit, params, seed)
    chosen: dict[str, Any] = {"rank": params.rank, "lam_model": params.lam_model}
    design = build_design(examples, prior_difficulty, prior_logit, params)
    fit = fit_core(design.feats, design.y, design.mask, design.offset, design.n_kernel, params)
    heads = heads_from_fit(design, fit, params)
    if params.calibrate:
        from router_models.calibration import calibrate_heads
        from router_models.neighbours import fit_neighbours, knn_grid

        heads, report = calibrate_heads(
            heads, examples, prior_difficulty, prior_logit, params, seed
        )
        chosen.update(beta=list(report["beta"]), calibration=report["chosen"], neighbours=0)
        if knn_grid(params):
            nb, _ = fit_neighbours(heads, examples, report["oof_p"], report["folds"], params, seed)
            if nb is not None:
                heads = replace(heads, neighbours=nb)
                chosen["neighbours"] = nb.k
    return heads, chosen
