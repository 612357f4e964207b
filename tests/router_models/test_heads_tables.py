"""The heads' and clusters' per-request tables: stored as narrow as is exact, same numbers.

A route's scorer gathers one row per bucket of a request from tables of tens of thousands of
rows; weights read from an artifact are float32 values, so the tables keep them as float32
(and bucket -> row lookups as uint16 / int16 where the sizes allow). These tests pin that the
narrow tables give what the float64 formula gives, to rounding of the float64 arithmetic, and
that sizes past the narrow types' range fall back to wide ones with the same results.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np

from router_models.clusters import CLIP, fit_clusters, narrowest
from router_models.heads import _LOG_TF, Heads, logistic
from router_models.learner import Example, LearnerParams, fit_heads
from router_models.signature import N_BUCKETS, WORD_BUCKETS, Signature, signature

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "omega",
    "sigma",
    "tau",
    "rho",
    "kappa",
    "theta",
    "iota",
    "zeta",
]


def _examples(n: int, seed: int) -> list[Example]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = i % 3
        words = " ".join(rng.choice(WORDS[kind * 4 : kind * 4 + 4], size=12))
        text = f"Task {kind}: {words}. Please answer."
        labels = {"A": float(kind == 0), "B": float(kind != 0)}
        out.append(
            Example(sig=signature([{"role": "user", "content": text}]), labels=labels, group=str(i))
        )
    return out


def _fitted() -> tuple[Heads, list[Example]]:
    examples = _examples(150, 0)
    heads = fit_heads(
        examples,
        np.zeros(len(examples)),
        lambda _m: np.zeros(len(examples)),
        LearnerParams(calibrate=0),
    )
    cmap = fit_clusters([e.sig for e in examples], 3, min_df=3, seed=0)
    return replace(heads, clusters=cmap, cluster_w=np.array([[0.5, -0.5], [-1, 1], [0, 0.2]])), (
        examples
    )


def _loaded(heads: Heads) -> Heads:
    """Through the artifact's arrays, as the gateway reads them."""
    return Heads.from_arrays(
        {k: np.asarray(v) for k, v in heads.to_arrays().items()},
        json.loads(json.dumps(heads.meta())),
    )


def _reference_logits(h: Heads, sig: Signature, d: float) -> np.ndarray:
    """The heads' formula in float64, bucket by bucket, from their public arrays."""
    where = {int(b): j for j, b in enumerate(h.active_ids)}
    idf = np.array([h.idf[where[b]] if b in where else h.idf_default for b in sig.ids.tolist()])
    x = _LOG_TF[sig.counts] * idf
    words = sig.ids < WORD_BUCKETS
    for block, weight in ((words, h.word_weight), (~words, h.char_weight)):
        norm = math.sqrt(float((x[block] ** 2).sum()))
        if norm > 1e-12:
            x[block] *= weight / norm
    w = np.array(
        [
            h.sparse_w[where[b]].astype(np.float64) if b in where else np.zeros(len(h.models))
            for b in sig.ids.tolist()
        ]
    ).reshape(len(sig.ids), len(h.models))
    z = np.clip((np.append(sig.dense, d) - h.dense_mean) / h.dense_scale, -CLIP, CLIP)
    out: np.ndarray = x @ w + z @ h.dense_w + h.intercept + h.d_coef * d
    if h.clusters is not None and h.cluster_w is not None:
        out = out + h.cluster_w[h.clusters.assign(sig)]
    return out


def test_loaded_heads_keep_float32_tables_and_lose_nothing() -> None:
    heads, examples = _fitted()
    back = _loaded(heads)
    assert back.clusters is not None
    # what an artifact holds is float32: the per-request tables stay float32 (half the memory
    # a request's gather touches); fitted in memory, the weights are wider and stay float64
    assert back._w_rows.dtype == np.float32 and back.clusters._rows.dtype == np.float32
    assert heads._w_rows.dtype == np.float64
    assert back._lookup.dtype == np.uint16 and back.clusters._lookup.dtype == np.int16
    for e in examples[:40] + _examples(20, 9):
        want = _reference_logits(back, e.sig, 0.3)
        got = back.logits(e.sig, 0.3)
        # float64 arithmetic throughout: a float32 product would be off by ~1e-7
        assert np.abs(got - want).max() < 1e-12
        assert np.allclose(back.p(e.sig, 0.3), logistic(want), rtol=0, atol=1e-12)


def test_narrowest_is_float32_only_when_exact() -> None:
    assert narrowest(np.array([0.5, -2.0, 1e-3], dtype=np.float32).astype(np.float64)) is (
        np.float32
    )
    assert narrowest(np.array([0.1, 0.5])) is np.float64
    assert narrowest(np.array([1e300])) is np.float64  # beyond float32's range


def test_wide_lookups_past_the_narrow_types_range_give_the_same_p() -> None:
    """65,534+ weighted buckets (or 32,767+ centroid rows) do not fit the narrow row types:
    the lookups are int32 there, and the same request gets the same probabilities."""
    heads, examples = _fitted()
    back = _loaded(heads)
    assert back.clusters is not None
    # pad the active set with weightless buckets whose idf is the default: they change no
    # request's values, only the tables' sizes
    rng = np.random.default_rng(1)
    extra = np.setdiff1d(rng.choice(N_BUCKETS, size=80_000, replace=False), back.active_ids)
    ids = np.concatenate((back.active_ids, extra))
    order = np.argsort(ids)
    n_models = len(back.models)
    wide = replace(
        back,
        active_ids=ids[order],
        idf=np.concatenate((back.idf, np.full(extra.size, back.idf_default)))[order],
        sparse_w=np.concatenate((back.sparse_w, np.zeros((extra.size, n_models))))[order],
    )
    # the clusters read which of their buckets a request has: pad with buckets no tested
    # request has
    c = back.clusters
    seen = np.unique(np.concatenate([e.sig.ids for e in examples[:30]]))
    cids = np.concatenate((c.ids, np.setdiff1d(extra[:40_000], np.union1d(c.ids, seen))))
    corder = np.argsort(cids)
    padded = np.concatenate((c.centroids, np.zeros((cids.size - c.ids.size, c.k))))[corder]
    wide = replace(wide, clusters=replace(c, ids=cids[corder], centroids=padded))
    assert wide.active_ids.size > 65_534 and wide._lookup.dtype == np.int32
    assert wide.clusters is not None and wide.clusters._lookup.dtype == np.int32
    for e in examples[:30]:
        assert wide.clusters.assign(e.sig) == c.assign(e.sig)
        assert np.allclose(wide.p(e.sig, 0.1), back.p(e.sig, 0.1), rtol=0, atol=1e-12)
