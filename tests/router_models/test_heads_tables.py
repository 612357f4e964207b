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

# three kinds of request, four words each: "redfox", "redowl", ... "greenyak"
WORDS = [
    f"{colour}{animal}"
    for colour in ("red", "blue", "green")
    for animal in ("fox", "owl", "elk", "yak")
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
    shifts = np.array([[0.5, -0.5], [-1.0, 1.0], [0.0, 0.2]])
    return replace(heads, clusters=cmap, cluster_w=shifts), examples


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


def _novel() -> list[Example]:
    """Requests with buckets the heads never saw (they look up row A, the weightless one)."""
    texts = ["Zebra quantum xylophone, 42 jumps!", "def f(x):\n    return {x: x ** 2}"]
    return [Example(sig=signature([{"role": "user", "content": t}]), labels={}) for t in texts]


def _unused(examples: list[Example], taken: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` bucket ids that no example's signature has and ``taken`` does not hold."""
    seen = np.unique(np.concatenate([e.sig.ids for e in examples] + [taken]))
    pool = np.setdiff1d(np.arange(N_BUCKETS), seen)
    return np.sort(np.random.default_rng(seed).choice(pool, size=n, replace=False))


def _padded(h: Heads, extra: np.ndarray, weight: float = 0.0) -> Heads:
    """The same heads over more active buckets (``extra``: idf the default, every model's
    weight ``weight``); a request without those buckets gets the same values. Neighbour
    postings follow their rows; the new rows have none."""
    ids = np.concatenate((h.active_ids, extra))
    order = np.argsort(ids, kind="stable")
    n_models = len(h.models)
    nb = h.neighbours
    if nb is not None:
        a = h.active_ids.size
        lengths = np.diff(nb.indptr)  # (A + 1,): the active rows, then row A (none)
        new_len = np.concatenate((lengths[:a], np.zeros(extra.size, np.int64)))[order]
        pieces = [np.arange(nb.indptr[j], nb.indptr[j + 1]) for j in order if j < a]
        at = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
        indptr = np.concatenate(([0], np.cumsum(new_len), [new_len.sum()]))
        nb = replace(nb, indptr=indptr.astype(np.int64), refs=nb.refs[at], vals=nb.vals[at])
    return replace(
        h,
        active_ids=ids[order],
        idf=np.concatenate((h.idf, np.full(extra.size, h.idf_default)))[order],
        sparse_w=np.concatenate((h.sparse_w, np.full((extra.size, n_models), weight)))[order],
        neighbours=nb,
    )


def test_narrow_and_wide_tables_give_the_same_bits() -> None:
    """One weight that is not a float32 value keeps a table float64; a request without that
    bucket then gets, from the wide tables, exactly what the narrow ones give."""
    heads, examples = _fitted()
    back = _loaded(heads)
    c = back.clusters
    assert c is not None
    tested = examples[:40] + _examples(20, 9) + _novel()
    extra = _unused(tested, np.union1d(back.active_ids, c.ids), 1, 0)
    wide = _padded(back, extra, weight=0.1)
    cids = np.concatenate((c.ids, extra))
    corder = np.argsort(cids)
    cents = np.concatenate((c.centroids, np.full((1, c.k), 0.1)))[corder]
    wide = replace(wide, clusters=replace(c, ids=cids[corder], centroids=cents))
    assert wide.clusters is not None
    assert wide._w_rows.dtype == np.float64 and wide.clusters._rows.dtype == np.float64
    assert back._w_rows.dtype == np.float32 and c._rows.dtype == np.float32
    for e in tested:
        assert wide.clusters.assign(e.sig) == c.assign(e.sig)
        assert np.array_equal(wide.logits(e.sig, 0.3), back.logits(e.sig, 0.3))
        assert np.array_equal(wide.p(e.sig, 0.3), back.p(e.sig, 0.3))


def _with_neighbours(heads: Heads, examples: list[Example]) -> Heads:
    """``heads`` with a neighbour index over ``examples`` (built as fit_neighbours builds
    it, without its choice of whether to use one)."""
    from router_models.neighbours import Neighbours, _matrix

    by_row = _matrix(heads, examples).tocsc()
    by_row.eliminate_zeros()
    by_row.sort_indices()
    y = np.array([[e.labels[m] for m in heads.models] for e in examples])
    return replace(
        heads,
        neighbours=Neighbours(
            indptr=np.append(by_row.indptr, by_row.indptr[-1]).astype(np.int64),
            refs=by_row.indices.astype(np.int32),
            vals=by_row.data.astype(np.float64),
            y=y,
            mask=np.ones_like(y),
            k=5,
            alpha=2.0,
        ),
    )


def test_row_lookups_at_the_edge_of_uint16_give_the_same_p() -> None:
    """Rows go up to A and the neighbours' postings read row + 1: uint16 holds A = 65,534
    at most. Either side of that edge, with a neighbour index, the same P as the small
    heads."""
    heads, examples = _fitted()
    small = _with_neighbours(_loaded(heads), examples[:60])
    tested = examples[:30] + _examples(10, 5) + _novel()
    base = [small.p(e.sig, 0.1) for e in tested]
    assert small.neighbours is not None
    assert any(small.neighbours.sums(*small._x(e.sig)) is not None for e in tested)
    # the cases reach row A (a bucket without weight), whose postings end at row A + 1
    assert any((small._x(e.sig)[0] == small.active_ids.size).any() for e in tested)
    for size, dtype in ((65_534, np.uint16), (65_535, np.int32)):
        n = size - small.active_ids.size
        big = _padded(small, _unused(tested, small.active_ids, n, 1))
        assert big.active_ids.size == size and big._lookup.dtype == dtype
        for e, want in zip(tested, base, strict=True):
            assert np.array_equal(big.p(e.sig, 0.1), want)


def test_wide_cluster_lookups_past_int16_assign_the_same_cluster() -> None:
    """32,769+ centroid rows do not fit int16 (rows 0 .. B - 1 and -1 for none): the lookup
    is int32 there, and a request lands in the same cluster."""
    heads, examples = _fitted()
    c = _loaded(heads).clusters
    assert c is not None
    tested = examples[:30] + _novel()
    for size, dtype in ((32_768, np.int16), (32_769, np.int32)):
        extra = _unused(tested, c.ids, size - c.ids.size, 2)
        ids = np.concatenate((c.ids, extra))
        order = np.argsort(ids)
        cents = np.concatenate((c.centroids, np.zeros((extra.size, c.k))))[order]
        wide = replace(c, ids=ids[order], centroids=cents)
        assert wide._lookup.dtype == dtype
        for e in tested:
            assert wide.assign(e.sig) == c.assign(e.sig)
