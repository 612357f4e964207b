from __future__ import annotations

import numpy as np
import pytest

from router_models import metrics

STRONG = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0], dtype=float)
WEAK = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0], dtype=float)
PERFECT = np.array([0, 0, 1, 1, 1, 1, 0, 0, 0, 0], dtype=float)  # strong wins exactly here


def test_perfect_router_hand_computed():
    curve = metrics.pgr_curve(PERFECT, STRONG, WEAK)
    assert curve.share.tolist() == [0.0, 0.4, 1.0]
    assert curve.pgr.tolist() == pytest.approx([0.0, 1.0, 1.0])
    assert metrics.apgr(curve) == pytest.approx(0.4 * 0.5 + 0.6 * 1.0)
    assert metrics.cpt(curve, 0.5) == pytest.approx(0.2)
    assert metrics.cpt(curve, 0.8) == pytest.approx(0.32)


def test_inverted_router_hand_computed():
    curve = metrics.pgr_curve(1.0 - PERFECT, STRONG, WEAK)
    assert curve.share.tolist() == [0.0, 0.6, 1.0]
    assert curve.pgr.tolist() == pytest.approx([0.0, 0.0, 1.0])
    assert metrics.apgr(curve) == pytest.approx(0.2)
    assert metrics.cpt(curve, 0.5) == pytest.approx(0.8)


def test_random_router_is_near_half():
    rng = np.random.default_rng(1)
    n = 20_000
    strong = (rng.random(n) < 0.7).astype(float)
    weak = (rng.random(n) < 0.4).astype(float)
    curve = metrics.pgr_curve(rng.random(n), strong, weak)
    assert len(curve.share) == 12  # 11 decile edges + the all-weak end
    assert metrics.apgr(curve) == pytest.approx(0.5, abs=0.03)


def test_cpt_reads_the_monotone_curve():
    curve = metrics.PGRCurve(
        share=np.array([0.0, 0.2, 0.4, 1.0]),
        pgr=np.array([0.0, 0.9, 0.6, 1.0]),
        quality=np.zeros(4),
        strong_quality=1.0,
        weak_quality=0.0,
    )
    assert metrics.cpt(curve, 0.45) == pytest.approx(0.1)
    assert metrics.cpt(curve, 0.95) == pytest.approx(0.4 + 0.6 * (0.05 / 0.1))


def test_equal_models_rejected():
    with pytest.raises(ValueError, match="same mean"):
        metrics.pgr_curve(PERFECT, STRONG, STRONG)


def test_decile_edges_match_qcut_bins():
    edges = metrics.decile_edges(np.arange(11, dtype=float))
    assert edges.tolist() == pytest.approx(list(range(11)))
    assert metrics.decile_edges(np.array([3.0, 3.0, 3.0])).tolist() == [3.0]


def test_hull_aiq_and_cost_to_reach():
    cost = np.array([0.0, 1.0, 0.5])
    assert metrics.aiq(cost[:2], np.array([0.0, 1.0]), 0.0, 1.0) == pytest.approx(0.5)
    dominated = np.array([0.0, 1.0, 0.2])
    assert metrics.aiq(cost, dominated, 0.0, 1.0) == pytest.approx(0.5)
    quality = np.array([0.0, 1.0, 0.9])
    xs, ys = metrics.upper_hull(cost, quality)
    assert xs.tolist() == [0.0, 0.5, 1.0]
    assert metrics.aiq(cost, quality, 0.0, 1.0) == pytest.approx(0.7, abs=1e-6)
    assert metrics.cost_to_reach(cost, quality, 0.9) == pytest.approx(0.5)
    assert metrics.cost_to_reach(cost, quality, 0.95) == pytest.approx(0.75)
    assert metrics.cost_to_reach(cost, quality, 1.1) is None


def test_cost_share_to_match_best_by_hand():
    # two prompts; a cheap model (cost 1) right on the first only, a strong one (10) on both
    cost = np.array([[1.0, 10.0], [1.0, 10.0]])
    score = np.array([[1.0, 1.0], [0.0, 1.0]])
    knows = np.array([[0.9, 0.9], [0.1, 0.9]])  # sends only the second prompt up: 5.5 / 10
    assert metrics.cost_share_to_match_best(knows, cost, score) == pytest.approx(0.55)
    blind = np.array([[0.5, 0.9], [0.5, 0.9]])  # all cheap or all strong: the strong's cost
    assert metrics.cost_share_to_match_best(blind, cost, score) == pytest.approx(1.0)
    never = np.array([[0.9, 0.2], [0.9, 0.2]])  # never picks the strong model
    assert metrics.cost_share_to_match_best(never, cost, score) is None


def test_hull_is_non_decreasing():
    xs, ys = metrics.upper_hull(np.array([0.0, 1.0, 2.0]), np.array([0.5, 0.9, 0.7]))
    assert xs.tolist() == [0.0, 1.0]
    assert ys.tolist() == [0.5, 0.9]


def test_route_by_bar_picks_cheapest_above_else_best():
    p = np.array([[0.9, 0.5], [0.3, 0.2], [0.6, 0.6]])
    cost = np.array([[2.0, 1.0], [2.0, 1.0], [1.0, 1.0]])
    assert metrics.route_by_bar(p, cost, 0.4).tolist() == [1, 0, 0]
    assert metrics.route_by_bar(p, cost, 0.95).tolist() == [0, 0, 0]
    curve = metrics.cost_quality_curve(p, cost, np.array([[1, 0], [1, 1], [0, 1]]), [0.4])
    assert curve[0].cost == pytest.approx(4 / 3)
    assert curve[0].quality == pytest.approx(1 / 3)


def test_brier_and_reliability():
    p = np.array([0.05, 0.05, 0.95, 0.95])
    y = np.array([0.0, 1.0, 1.0, 1.0])
    assert metrics.brier(p, y) == pytest.approx((0.0025 + 0.9025 + 0.0025 + 0.0025) / 4)
    table = metrics.reliability(p, y)
    assert [(b["n"], b["observed"]) for b in table] == [(2, 0.5), (2, 1.0)]


def _labels(means: dict[str, float], n: int = 200, missing: dict[str, int] | None = None):
    from router_models.data import LabelMatrix

    names = tuple(means)
    scores = np.array([[float(i < means[m] * n) for m in names] for i in range(n)])
    mask = np.ones_like(scores, dtype=bool)
    for m, k in (missing or {}).items():
        mask[:k, names.index(m)] = False
    return LabelMatrix(names, scores, mask)


def test_default_pair_rule():
    from router_models.data import Price
    from router_models.routing import default_pair

    means = {"top": 0.9, "sparse": 0.95, "near": 0.8, "cheap_lo": 0.3, "cheap_hi": 0.6, "dear": 0.5}
    # "sparse" is scored on 90% of rows only, so it cannot be the strong model
    labels = _labels(means, missing={"sparse": 20})
    prices = {
        "top": Price(5.0, 15.0),
        "near": Price(0.01, 0.01),  # cheapest of all, but not 0.15 below the strong model
        "cheap_lo": Price(0.1, 0.2),
        "cheap_hi": Price(0.2, 0.1),  # same total price: the higher mean wins the tie
        "dear": Price(1.0, 1.0),
    }
    assert default_pair(labels, prices) == ("top", "cheap_hi")
    # nothing priced: the best model at least 0.15 below
    assert default_pair(labels, {}) == ("top", "cheap_hi")
    # nothing 0.15 below: the weakest covered model
    assert default_pair(_labels({"a": 0.9, "b": 0.85, "c": 0.8}), {}) == ("a", "c")


def test_files_whose_models_each_label_part_of_the_rows_still_have_a_pair_and_a_table():
    from router_models.data import Price, Result, Row
    from router_models.routing import cost_table, coverage_floor, default_pair

    assert coverage_floor([1.0, 0.995, 0.5]) == 0.99
    assert coverage_floor([1.0, 0.7, 0.6]) == 0.5  # one model at 99%: not enough for a pair
    # every model scored on 60-80% of the rows: the 50% floor takes them all
    means = {"top": 0.9, "mid": 0.7, "low": 0.4, "rare": 0.99}
    labels = _labels(means, missing={"top": 40, "mid": 60, "low": 80, "rare": 120})
    # "rare" (40% of the rows) takes no part; mid is the best model 0.15 below top
    assert default_pair(labels, {}) == ("top", "mid")
    with pytest.raises(ValueError, match="50% of rows"):
        default_pair(_labels(means, missing=dict.fromkeys(means, 150)), {})
    msgs = ({"role": "user", "content": "x"},)
    rows = [
        Row(f"r:{i}", "r", "t", msgs, {m: Result(1.0, 0.01) for m in means}) for i in range(200)
    ]
    prices = {m: Price(1.0, 1.0) for m in means}
    table = cost_table(rows, labels, prices)
    assert table.models == ("top", "mid", "low") and table.left_out == ("rare",)
    assert table.used.sum() == 200 - 80  # the rows where all three are scored
    # the floor is taken over the priced models: two unpriced ones on every row do not make
    # the 99% floor apply to the priced ones, which each label part of the rows
    labels = _labels(
        {**means, "free1": 0.5, "free2": 0.5}, missing={"top": 40, "mid": 60, "low": 80}
    )
    rows = [
        Row(r.id, r.source, r.task, msgs, {**r.results, "free1": Result(1.0), "free2": Result(1.0)})
        for r in rows
    ]
    table = cost_table(rows, labels, {m: Price(1.0, 1.0) for m in ("top", "mid", "low")})
    assert table.models == ("top", "mid", "low")


def test_shared_rows_models_drops_the_models_that_keep_most_rows_incomplete() -> None:
    from router_models.routing import shared_rows_models

    n = 200
    mask = np.ones((n, 6), dtype=bool)
    for j in range(6):  # each model misses its own 15% of the rows: 10% are complete
        mask[j * 30 : (j + 1) * 30, j] = False
    mask[:40, 5] = False  # model 5 misses 10 more (rows model 0 misses too)
    kept = shared_rows_models(mask, range(6), 0.5)
    # dropping 5 first completes 30 rows (its own), then 4 and 3 (the later of equals):
    # 20 + 30 + 30 + 30 = 110 complete rows, 55%
    assert kept == [0, 1, 2] and int(mask[:, kept].all(axis=1).sum()) == 110
    assert shared_rows_models(mask, range(6), 0.05) == list(range(6))  # 20 rows: enough
    assert shared_rows_models(mask, [0, 1], 0.99) == [0, 1]  # never below two
    # a judged sample (every model on 40% of the rows) beside rows that only the model that
    # served them scores: no drop completes a row, so every model stays, on the sample
    judged = np.zeros((1000, 5), dtype=bool)
    judged[:400] = True
    judged[np.arange(1000), np.arange(1000) % 5] = True
    assert shared_rows_models(judged, range(5), 0.5) == list(range(5))
    # independent gaps in every row (no row misses exactly one model): the least covered go
    rng = np.random.default_rng(0)
    gaps = rng.random((400, 40)) > 0.1
    kept = shared_rows_models(gaps, range(40), 0.5)
    assert int(gaps[:, kept].all(axis=1).sum()) >= 200 and len(kept) >= 2


def test_cost_table_keeps_half_of_the_rows_when_models_miss_different_ones() -> None:
    from router_models.data import LabelMatrix, Price, Result, Row
    from router_models.routing import cost_table

    names = ("a", "b", "c", "d")
    mask = np.ones((200, 4), dtype=bool)
    for j in range(4):  # each misses its own 20% (80% coverage each): 20% complete
        mask[j * 40 : (j + 1) * 40, j] = False
    mask[160:, 3] = False  # "d" misses 40 more: 60% coverage
    labels = LabelMatrix(names, np.ones((200, 4)), mask)
    msgs = ({"role": "user", "content": "x"},)
    rows = [
        Row(f"r:{i}", "r", "t", msgs, {m: Result(1.0, 0.01) for m in names}) for i in range(200)
    ]
    table = cost_table(rows, labels, {m: Price(1.0, 1.0) for m in names})
    # "d" goes first (80 rows that only it misses), then "c", the later of three equals:
    # a and b share 120 rows
    assert table.models == ("a", "b") and table.left_out == ("c", "d")
    assert int(table.used.sum()) == 120 and table.score.shape == (120, 2)
