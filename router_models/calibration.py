"""The learner's calibration stage: per-model scaling, workflow-cluster and workflow-tag
shifts, fitted on out-of-fold logits (training time only; folded into the heads' arrays).

The heads (`router_models.learner`) come out of one penalised fit. Two things are left
that a many-model route cares about, because it holds every model's P against one bar:

- a model's logit can be over- or under-confident: penalties shrink every model alike,
  and the features that move a logit within a workflow may be noise for this traffic;
- the fit under-uses what a deployment repeats most, its workflows: which model succeeds
  on a whole kind of request (a code task, trivia, a long document) is spread over many
  small n-gram weights that the penalty shrinks.

So `calibrate_heads` refits the heads ``params.calibrate`` times with one fold left out
(folds keep identical prompts together) and collects every labelled (prompt, model)'s logit
from the fit that did not see it. First, where those logits lose to the prior's, they are
moved toward it (`shrink_to_prior`): the heads' penalties are fixed, and with a few hundred
labels, or traffic whose outcomes the features barely separate, much of what the heads add
to the prior is noise (on mmlu_pro with 100 labelled prompts their Brier score was 0.195
against the prior's 0.179). The departure's part shared by every model and each model's own
part are scaled by the betas with the least out-of-fold log loss, folded into the heads'
arrays. Then, per model m,

    logit'_m(x) = a_m * logit_m(x) + c_m + e_m[cluster(x)] + t_m[tag(x)]

by penalised soft-label log loss: ``lam_calibrate / 2 * ((a_m - 1)^2 + c_m^2)`` and
``lam_cluster / 2 * (|e_m|^2 + |t_m|^2)``, so a model with few labels stays as it was.
The clusters are `router_models.clusters` workflow clusters of the training prompts; the
tags are what clients sent as ``x-effgate-task`` (tags of at least MIN_PER_TAG examples).
Which of these the stage uses (none of them; scale and shift only; a cluster count of
``params.cluster_grid``; with or without tags) is chosen in an inner k-fold over the
out-of-fold logits: the smallest candidate within one standard error of the least held-out
log loss, so the heads stay as they are unless a stage beats them by more than noise.
Serving cost: one cluster assignment (and a dict lookup for a tag) per request.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from router_models.clusters import ClusterMap, fit_clusters
from router_models.design import (
    build_design,
    example_labels,
    prior_of,
    prior_offsets,
    unknown_offsets,
)
from router_models.heads import Heads
from router_models.irt import sigmoid
from router_models.learner import (
    Example,
    LearnerParams,
    PriorLogit,
    fit_core,
    heads_from_fit,
    prior_subset,
)

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
K = TypeVar("K", bound=Hashable)  # a candidate of the one-standard-error rule
MIN_PER_CLUSTER = 25  # training prompts per cluster, on average, at the least
MIN_PER_TAG = 5  # a workflow tag seen less often gets no shift


@dataclass(frozen=True, slots=True)
class Stage:
    """Per model: scale a, shift c, and e: one row of shifts per indicator column (the
    clusters', then the tags'; none: zero rows)."""

    a: F64
    c: F64
    e: F64


def digest_folds(examples: Sequence[Example], folds: int, seed: int) -> I64:
    """A fold per example, identical prompts (same signature digest) in the same fold; a
    signature made without its digest is a group of its own."""
    keys = [e.sig.digest or f"#{i}" for i, e in enumerate(examples)]
    groups = sorted(set(keys))
    order = np.random.default_rng(seed).permutation(len(groups))
    of = {groups[int(g)]: k % folds for k, g in enumerate(order)}
    return np.array([of[key] for key in keys], dtype=np.int64)


def oof_logits(
    heads: Heads,
    examples: Sequence[Example],
    prior_difficulty: F64,
    prior_logit: PriorLogit,
    params: LearnerParams,
    seed: int,
) -> tuple[F64, I64]:
    """((n, M) logits of the heads' models, each from a fit without the example's fold (the
    full fit's own where a fold's fit lacks the model); each example's fold)."""
    d = np.asarray(prior_difficulty, dtype=np.float64).reshape(-1)
    z = np.stack([heads.logits(e.sig, float(d[i])) for i, e in enumerate(examples)])
    folds = max(2, int(params.calibrate))
    fold = digest_folds(examples, folds, seed)
    inner = replace(params, calibrate=0, select=0)
    for k in range(folds):
        tr = np.flatnonzero(fold != k).astype(np.int64)
        te = np.flatnonzero(fold == k)
        if tr.size == 0 or te.size == 0:
            continue
        design = build_design(
            [examples[int(i)] for i in tr], d[tr], prior_subset(prior_logit, tr), inner
        )
        fit = fit_core(design.feats, design.y, design.mask, design.offset, design.n_kernel, inner)
        h = heads_from_fit(design, fit, inner)
        cols = [h.index(m) for m in heads.models]
        have = np.array([j for j, c in enumerate(cols) if c is not None], dtype=np.intp)
        src = np.array([c for c in cols if c is not None], dtype=np.intp)
        for i in te:
            z[i, have] = h.logits(examples[int(i)].sig, float(d[i]), src)
    return z, fold


def indicators(n: int, blocks: Sequence[tuple[I64, int]]) -> F64:
    """(n, sum of sizes) 0/1 columns: per block (index per row, -1 for none; size)."""
    out = np.zeros((n, sum(size for _, size in blocks)))
    start = 0
    for idx, size in blocks:
        rows = np.flatnonzero(idx >= 0)
        out[rows, start + idx[rows]] = 1.0
        start += size
    return out


def fit_stage(z: F64, y: F64, w: F64, onehot: F64, lam_a: float, lam_e: float) -> Stage:
    """Minimise sum w * logloss(y, a z + c + onehot e) + lam_a/2 ((a-1)^2 + c^2) +
    lam_e/2 |e|^2 jointly over every model (columns of z, y, w; e: a row per indicator)."""
    from scipy.optimize import minimize

    m = z.shape[1]
    k = onehot.shape[1]

    def unpack(t: F64) -> tuple[F64, F64, F64]:
        return t[:m], t[m : 2 * m], t[2 * m :].reshape(k, m)

    def loss(t: F64) -> tuple[float, F64]:
        a, c, e = unpack(t)
        s = a[None, :] * z + c[None, :] + onehot @ e
        r = (sigmoid(s) - y) * w
        f = float(((np.logaddexp(0.0, s) - y * s) * w).sum())
        f += 0.5 * lam_a * float(((a - 1.0) ** 2).sum() + (c * c).sum())
        f += 0.5 * lam_e * float((e * e).sum())
        grad = np.concatenate(
            [
                (r * z).sum(axis=0) + lam_a * (a - 1.0),
                r.sum(axis=0) + lam_a * c,
                (onehot.T @ r + lam_e * e).ravel(),
            ]
        )
        return f, grad

    start = np.concatenate([np.ones(m), np.zeros(m + k * m)])
    res = minimize(loss, start, jac=True, method="L-BFGS-B", options={"maxiter": 500})
    a, c, e = unpack(np.asarray(res.x, dtype=np.float64))
    return Stage(a=a.copy(), c=c.copy(), e=e.copy())


def stage_logits(stage: Stage, z: F64, onehot: F64) -> F64:
    out: F64 = stage.a[None, :] * z + stage.c[None, :] + onehot @ stage.e
    return out


def workflow_tags(examples: Sequence[Example]) -> tuple[tuple[str, ...], I64]:
    """(the tags of at least MIN_PER_TAG examples, sorted; each example's index, -1 for none)."""
    counts: dict[str, int] = {}
    for e in examples:
        if e.tag:
            counts[e.tag] = counts.get(e.tag, 0) + 1
    tags = tuple(sorted(t for t, c in counts.items() if c >= MIN_PER_TAG))
    index = {t: j for j, t in enumerate(tags)}
    return tags, np.array([index.get(e.tag, -1) for e in examples], dtype=np.int64)


def grid(params: LearnerParams, n: int) -> list[int]:
    """The cluster counts to choose from: ``params.cluster_grid`` (comma-separated), each
    capped so that a cluster holds MIN_PER_CLUSTER prompts on average; 0 always."""
    ks = {0}
    for part in str(params.cluster_grid).split(","):
        if part.strip():
            k = int(part)
            if k < 0:
                raise ValueError(f"cluster_grid: {k} is not a cluster count")
            ks.add(min(k, n // MIN_PER_CLUSTER))
    return sorted(ks)


def one_standard_error(pair_loss: Mapping[str, F64], size: Mapping[str, int]) -> str:
    """The smallest candidate (fewest parameters per model) whose held-out loss is within
    one standard error of the best's (the paired difference over the same labelled pairs):
    a richer stage has to earn its place by more than noise."""
    mean = {c: float(v.mean()) for c, v in pair_loss.items()}
    return within_one_standard_error(mean, size, pair_loss.__getitem__)


def within_one_standard_error(
    mean: Mapping[K, float], size: Mapping[K, int], loss: Callable[[K], F64]
) -> K:
    """`one_standard_error`'s rule over candidates with these mean losses, each candidate's
    losses per labelled pair made by ``loss`` when the rule needs them (one at a time in
    memory): the smallest (then the least loss) within one standard error of the best."""
    best_key = min(mean, key=mean.__getitem__)
    best = loss(best_key)
    for c in sorted(mean, key=lambda c: (size[c], mean[c])):
        diff = loss(c) - best
        se = float(diff.std()) / math.sqrt(max(diff.size, 1))
        if float(diff.mean()) <= se:
            return c
    return best_key


def _split(r: F64) -> tuple[F64, F64]:
    """(the part shared by every model: each row's mean over the models, the rest)."""
    shared = r.mean(axis=-1, keepdims=True)
    return shared, r - shared


def _scaled(r: F64, betas: tuple[float, float]) -> F64:
    """A departure from the prior (rows of per-model values) with its shared part scaled by
    betas[0] and each model's own part by betas[1]."""
    shared, own = _split(r)
    out: F64 = betas[0] * shared + betas[1] * own
    return out


def shrink_to_prior(
    z: F64, pz: F64, y: F64, w: F64, steps: int
) -> tuple[tuple[float, float], dict[str, float]]:
    """((beta_shared, beta_model), held-out log loss per labelled pair of each pair tried).

    The heads' out-of-fold logits ``z`` depart from the prior's ``pz`` by r = z - pz, in
    two parts: r's mean over the models (what the heads learnt of a prompt's difficulty
    for all of them) and the rest (which model does better than the others there). Each
    part is scaled by a beta in {0, 1/steps, ..., 1}, beta_shared <= beta_model: the models'
    own part is what a deployment's labels add beyond any prior, and with partial labels
    (most requests labelled for the model that served them) the log loss of the labelled
    pairs cannot see what shrinking it costs the models not served.

    Only where the heads as they are lose to the prior (out-of-fold log loss): the heads'
    penalties are fixed, whatever the number of labels and however far the traffic is from
    what they can learn, and where the evidence is thin their departure from the prior is
    partly noise. There, by `one_standard_error`'s rule, the pair with the fewest betas
    below 1 (then the least loss) within one standard error of the least loss. Where the
    heads beat the
    prior they stay as they are: scaling them back would still lower the log loss a little,
    but it moves every model's P toward the prior's order of models, and on the shared files
    that made the many-model cost worse (docs/learner.md)."""
    keep = w > 0
    if steps <= 0 or not keep.any() or not (np.isfinite(z).all() and np.isfinite(pz).all()):
        return (1.0, 1.0), {}
    shared, own = _split(z - pz)
    # the labelled pairs only: one candidate's losses at a time (a few arrays of the labelled
    # pairs in memory, not one per candidate)
    yk, pk, sk, ok = y[keep], pz[keep], np.broadcast_to(shared, z.shape)[keep], own[keep]

    def pair_loss(a: float, b: float) -> F64:
        s = pk + a * sk + b * ok
        out: F64 = np.logaddexp(0.0, s) - yk * s
        return out

    betas = [j / steps for j in range(steps + 1)]
    candidates = [(a, b) for a in betas for b in betas if a <= b]
    mean = {c: float(pair_loss(*c).mean()) for c in candidates}
    losses = {f"{a},{b}": round(v, 6) for (a, b), v in mean.items()}
    if mean[(1.0, 1.0)] <= mean[(0.0, 0.0)]:
        return (1.0, 1.0), losses  # the heads as they are beat the prior
    size = {c: (c[0] != 1.0) + (c[1] != 1.0) for c in candidates}  # betas below 1
    a, b = within_one_standard_error(mean, size, lambda c: pair_loss(*c))
    # one model: it has no part of its own, and its beta is the shared one
    return ((a, a) if z.shape[1] == 1 else (a, b)), losses


def shrunk_heads(heads: Heads, betas: tuple[float, float], off_c: F64, off_g: F64) -> Heads:
    """``heads`` whose logit is ``prior + a * shared + b * own`` (`shrink_to_prior`), the
    prior's logit being ``off_c + off_g * d`` per model (heads before any calibration
    stage): every array of the departure split and scaled alike, the split being linear."""
    if betas == (1.0, 1.0):
        return heads
    if heads.clusters is not None or heads.tags or heads.neighbours is not None:
        raise ValueError("shrunk_heads takes heads before the calibration and neighbour stages")
    return replace(
        heads,
        sparse_w=_scaled(heads.sparse_w, betas),
        dense_w=_scaled(heads.dense_w, betas),
        intercept=off_c + _scaled(heads.intercept - off_c, betas),
        d_coef=off_g + _scaled(heads.d_coef - off_g, betas),
    )


def _oof_prior(
    models: Sequence[str],
    pz: F64,
    y: F64,
    mask: npt.NDArray[np.bool_],
    d: F64,
    fold: I64,
    prior_logit: PriorLogit,
    off_g: F64,
) -> F64:
    """``pz`` (the prior's logits of every example, (n, M)) out of fold: a model the prior
    does not know gets `design.unknown_offsets` of the other folds' labels (the known
    models' mean slope ``off_g``, or none known, the slope pooled over those labels), as in
    the heads' out-of-fold logits."""
    out = pz.copy()
    known = np.array([prior_of(prior_logit, m) is not None for m in models], dtype=bool)
    if known.all():
        return out
    cols = (~known).nonzero()[0]
    slope = float(off_g[known].mean()) if known.any() else None
    for k in np.unique(fold):
        tr, te = fold != k, fold == k
        c, g = unknown_offsets(y[tr][:, cols], mask[tr][:, cols], d[tr], slope)
        out[np.ix_(te, cols)] = c[None, :] + d[te, None] * g[None, :]
    return out


def calibrate_heads(
    heads: Heads,
    examples: Sequence[Example],
    prior_difficulty: F64,
    prior_logit: PriorLogit,
    params: LearnerParams,
    seed: int = 0,
) -> tuple[Heads, dict[str, Any]]:
    """(the heads with the calibration stage folded in, a report: the clusters and tags
    chosen, every candidate's held-out log loss per labelled pair, and for the stage after
    it (`router_models.neighbours`) "oof_p", each example's P from the out-of-fold logits
    through the chosen stage, and "folds", each example's fold).

    Candidates: each cluster count of `grid` (0: scale and shift only), each with and
    without the workflow tags when the examples carry any; the heads as they are win when
    no candidate beats them."""
    n = len(examples)
    z, fold = oof_logits(heads, examples, prior_difficulty, prior_logit, params, seed)
    models, y, mask = example_labels(examples)
    if models != heads.models:
        raise ValueError("the heads were not fitted on these examples' models")
    w = mask.astype(np.float64)
    d = np.asarray(prior_difficulty, dtype=np.float64).reshape(-1)
    off_c, off_g = prior_offsets(models, y, mask, d, prior_logit)
    pz = off_c[None, :] + d[:, None] * off_g[None, :]
    pz = _oof_prior(models, pz, y, mask, d, fold, prior_logit, off_g)
    beta, beta_loss = shrink_to_prior(z, pz, y, w, int(params.prior_shrink))
    if beta != (1.0, 1.0):
        z = pz + _scaled(z - pz, beta)
        heads = shrunk_heads(heads, beta, off_c, off_g)
    inner = digest_folds(examples, max(2, int(params.calibrate)), seed + 1)
    labelled = max(float(w.sum()), 1.0)
    tags, tag_of = workflow_tags(examples)
    # held-out log loss of every labelled pair, per candidate; the heads as they are first
    pair_loss: dict[str, F64] = {"none": ((np.logaddexp(0.0, z) - y * z) * w)[w > 0]}
    size: dict[str, int] = {"none": 0}
    designs: dict[str, tuple[ClusterMap | None, bool, F64]] = {}
    min_df = max(3, math.ceil(params.cluster_min_df * n))
    for k in grid(params, n):
        cmap = None
        blocks: list[tuple[I64, int]] = []
        if k:
            cmap = fit_clusters(
                [e.sig for e in examples],
                k,
                min_df=min_df,
                dense_weight=params.cluster_dense_weight,
                seed=seed,
            )
            blocks.append((np.array([cmap.assign(e.sig) for e in examples]), cmap.k))
        for with_tags in (False, True) if tags else (False,):
            onehot = indicators(n, [*blocks, (tag_of, len(tags))] if with_tags else blocks)
            held = np.zeros_like(z)
            for f in range(int(inner.max()) + 1):
                tr, te = inner != f, inner == f
                st = fit_stage(
                    z[tr], y[tr], w[tr], onehot[tr], params.lam_calibrate, params.lam_cluster
                )
                sl = stage_logits(st, z[te], onehot[te])
                held[te] = (np.logaddexp(0.0, sl) - y[te] * sl) * w[te]
            name = f"clusters={0 if cmap is None else cmap.k}" + (",tags" if with_tags else "")
            designs[name] = (cmap, with_tags, onehot)
            pair_loss[name] = held[w > 0]
            size[name] = 2 + onehot.shape[1]
    losses = {c: float(v.sum()) / labelled for c, v in pair_loss.items()}
    best = one_standard_error(pair_loss, size)
    report: dict[str, Any] = {
        "beta": beta,
        "beta_log_loss": beta_loss,
        "chosen": best,
        "log_loss": {c: round(v, 6) for c, v in losses.items()},
    }
    report["folds"] = fold
    if best == "none":
        report["oof_p"] = sigmoid(z)
        return heads, report
    cmap, with_tags, onehot = designs[best]
    st = fit_stage(z, y, w, onehot, params.lam_calibrate, params.lam_cluster)
    report["oof_p"] = sigmoid(stage_logits(st, z, onehot))
    kk = 0 if cmap is None else cmap.k
    out = replace(
        heads,
        sparse_w=heads.sparse_w * st.a[None, :],
        dense_w=heads.dense_w * st.a[None, :],
        intercept=heads.intercept * st.a + st.c,
        d_coef=heads.d_coef * st.a,
        clusters=cmap,
        cluster_w=None if cmap is None else st.e[:kk],
        tags=tags if with_tags else (),
        tag_w=st.e[kk:] if with_tags else None,
    )
    report["scale"] = {m: round(float(a), 4) for m, a in zip(heads.models, st.a, strict=True)}
    return out, report
