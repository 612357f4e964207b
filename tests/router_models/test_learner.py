from __future__ import annotations

import json

import numpy as np
import pytest

from router_models.design import pooled_slope, prior_offsets, unknown_offsets
from router_models.heads import Heads
from router_models.learner import (
    SELECT_GRID,
    Example,
    LearnerParams,
    _data_term,
    fit_core,
    fit_heads,
    select_params,
)
from router_models.signature import signature

FILLER = [
    "the",
    "a",
    "of",
    "to",
    "in",
    "is",
    "on",
    "for",
    "with",
    "as",
    "by",
    "at",
    "from",
    "this",
    "that",
    "it",
    "be",
]


def _prompts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Prompts with word X (kind 0) or word Y (kind 1) among filler words."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 2, n)
    texts = []
    for k in kind:
        words = list(rng.choice(FILLER, 12)) + ["xylophone" if k == 0 else "zeppelin"]
        rng.shuffle(words)
        texts.append(" ".join(words))
    return texts, kind


def _examples(texts: list[str], labels: list[dict[str, float]]) -> list[Example]:
    return [
        Example(signature([{"role": "user", "content": t}]), lab, "g")
        for t, lab in zip(texts, labels, strict=True)
    ]


def _flat_prior(n: int):
    return lambda m: np.zeros(n) if m in ("A", "B", "C", "D") else None


def test_recovers_who_succeeds_where_and_gain() -> None:
    texts, kind = _prompts(300, 0)
    labels = [{"A": float(k == 0), "B": float(k == 1)} for k in kind]
    heads = fit_heads(_examples(texts, labels), np.zeros(300), _flat_prior(300))
    new, new_kind = _prompts(60, 1)
    ia, ib = heads.index("A"), heads.index("B")
    assert ia is not None and ib is not None
    p = np.stack([heads.p(signature([{"role": "user", "content": t}]), 0.0) for t in new])
    gain = p[:, ia] - p[:, ib]
    assert gain[new_kind == 0].min() > gain[new_kind == 1].max()
    assert gain[new_kind == 0].mean() - gain[new_kind == 1].mean() > 0.4
    sub = heads.p(signature([{"role": "user", "content": new[0]}]), 0.0, np.array([ib, ia]))
    assert np.allclose(sub, p[0, [ib, ia]])
    # a route's own heads (its candidates' columns): the same probabilities, in its order
    only = heads.subset([ib, ia])
    assert only.models == ("B", "A")
    assert np.allclose(only.p(signature([{"role": "user", "content": new[0]}]), 0.0), sub)


def test_partial_labels_and_shrinkage() -> None:
    n = 400
    texts, kind = _prompts(n, 2)
    rng = np.random.default_rng(3)
    labels: list[dict[str, float]] = []
    for i, k in enumerate(kind):
        lab = {"A": float(k == 0)} if rng.random() < 0.5 else {"B": float(k == 1)}
        if i < 3:
            lab["C"] = 1.0  # C: three labels, all successes
        lab["D"] = 1.0 if rng.random() < 0.95 else 0.0  # D: many, mostly successes
        labels.append(lab)
    heads = fit_heads(_examples(texts, labels), np.zeros(n), _flat_prior(n))
    assert dict(zip(heads.models, heads.label_counts.tolist(), strict=True))["C"] == 3
    sig = signature([{"role": "user", "content": texts[-1]}])
    p = dict(zip(heads.models, heads.p(sig, 0.0), strict=True))
    assert abs(p["C"] - 0.5) < 0.15  # few labels: near the prior's 0.5
    assert p["D"] > 0.8  # many labels: moved
    assert (p["A"] > p["B"]) == (kind[-1] == 0)


def test_unknown_model_gets_its_mean_and_arrays_round_trip() -> None:
    texts, kind = _prompts(120, 4)
    labels = [{"A": float(k == 0), "new": 0.8} for k in kind]
    heads = fit_heads(_examples(texts, labels), np.zeros(120), _flat_prior(120))
    sig = signature([{"role": "user", "content": texts[0]}])
    j = heads.index("new")
    assert j is not None
    mean = np.mean([heads.p(signature([{"role": "user", "content": t}]), 0.0)[j] for t in texts])
    assert abs(float(mean) - 0.8) < 0.05
    arrays = {k: np.asarray(v) for k, v in heads.to_arrays().items()}
    meta = json.loads(json.dumps(heads.meta()))
    back = Heads.from_arrays(arrays, meta)
    assert np.allclose(back.logits(sig, 0.3), heads.logits(sig, 0.3), atol=1e-5)
    assert heads.index("nope") is None


def _irt_labels(
    n: int, c: dict[str, float], g: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(d, labels (n, M), all True mask) drawn from logit P = c_m + g d."""
    rng = np.random.default_rng(seed)
    d = rng.normal(0.0, 1.5, n)
    z = np.array(list(c.values()))[None, :] + g * d[:, None]
    y = (rng.random(z.shape) < 1.0 / (1.0 + np.exp(-z))).astype(float)
    return d, y, np.ones_like(y, dtype=bool)


def test_pooled_slope_recovers_the_labels_slope() -> None:
    d, y, mask = _irt_labels(4000, {"S": 1.0, "W": -1.0, "M": 0.0}, -0.8, 0)
    mask[:, 1:] = np.random.default_rng(1).random((4000, 2)) < 0.05  # two with few labels
    assert abs(pooled_slope(y, mask, d) + 0.8) < 0.08
    assert pooled_slope(y, mask, np.full(4000, 0.3)) == 0.0  # no spread in d
    assert pooled_slope(y, np.zeros_like(mask), d) == 0.0  # no labels
    # labels that d separates: a finite slope, not one that grows with the optimiser's steps
    line = np.linspace(-3.0, 3.0, 50)
    sep = pooled_slope((line < 0).astype(float)[:, None], np.ones((50, 1), dtype=bool), line)
    assert -5.0 < sep < -0.5


def test_pooled_slope_is_the_optimum_of_its_objective() -> None:
    """The fitted slope against a derivative-free minimisation of the same objective (soft
    log loss, unit ridge on the intercepts and on the slope per standard deviation of d):
    a loss and a gradient that disagree would stop the fit elsewhere."""
    from scipy.optimize import minimize

    d, y, mask = _irt_labels(300, {"S": 1.0, "W": -1.0}, -0.8, 7)
    mask[:, 1] = np.random.default_rng(8).random(300) < 0.3
    rows, cols = mask.nonzero()
    x = (d[rows] - d[rows].mean()) / d[rows].std()
    yy = y[rows, cols]

    def objective(theta: np.ndarray) -> float:
        z = theta[cols] + theta[2] * x
        return float((np.logaddexp(0.0, z) - yy * z).sum() + 0.5 * theta @ theta)

    best = minimize(
        objective,
        np.zeros(3),
        method="Nelder-Mead",
        options={"xatol": 1e-7, "fatol": 1e-9, "maxiter": 20000},
    )
    assert pooled_slope(y, mask, d) == pytest.approx(best.x[2] / d[rows].std(), abs=1e-3)


def test_unknown_offsets_match_each_models_smoothed_mean() -> None:
    d, y, mask = _irt_labels(500, {"S": 1.0, "W": -1.0}, -0.8, 2)
    mask[::2, 1] = False
    mask[:, 1] &= d > 0  # W labelled on the harder prompts only
    c, g = unknown_offsets(y, mask, d, -0.7)
    assert np.allclose(g, -0.7)
    for j in range(2):
        seen = mask[:, j]
        target = (y[seen, j].sum() + 1) / (seen.sum() + 2)
        assert abs(np.mean(1 / (1 + np.exp(-(c[j] + g[j] * d[seen])))) - target) < 1e-9
    # the hard prompts' low mean does not make W look weak on every prompt: c is above the
    # constant logit of its mean
    w_mean = (y[mask[:, 1], 1].sum() + 1) / (mask[:, 1].sum() + 2)
    assert c[1] > np.log(w_mean / (1 - w_mean))
    # no labels: P 0.5 on average over every prompt
    c0, _ = unknown_offsets(y[:, :1], np.zeros((500, 1), dtype=bool), d, -0.7)
    assert abs(np.mean(1 / (1 + np.exp(-(c0[0] - 0.7 * d)))) - 0.5) < 1e-9


def test_a_model_the_prior_does_not_know_takes_the_known_slope() -> None:
    d, y, mask = _irt_labels(300, {"K": 0.5, "U": 0.0}, -0.8, 3)
    c, g = prior_offsets(("K", "U"), y, mask, d, {"K": 0.5 - 1.1 * d})
    assert np.allclose([c[0], g[0]], [0.5, -1.1]) and np.isclose(g[1], -1.1)
    # no model known: the pooled slope of their labels
    _, g2 = prior_offsets(("K", "U"), y, mask, d, {})
    assert -1.1 < g2[0] < -0.5 and g2[0] == g2[1]


def test_a_rarely_labelled_unknown_model_still_ranks_prompts_by_difficulty() -> None:
    """Bandit-like labels over models the prior does not know: the cheap model labelled on
    most prompts, the strong one on a few; the strong one's P still falls with d."""
    texts, _ = _prompts(400, 6)
    d, y, _ = _irt_labels(400, {"cheap": -0.5, "strong": 1.5}, -1.0, 4)
    rng = np.random.default_rng(5)
    labels = [
        {"strong": y[i, 1]} if rng.random() < 0.05 else {"cheap": y[i, 0]} for i in range(400)
    ]
    heads = fit_heads(_examples(texts, labels), d, {}, LearnerParams(calibrate=0))
    j = heads.index("strong")
    assert j is not None and heads.label_counts[j] < 40
    sig = signature([{"role": "user", "content": texts[0]}])
    p_easy, p_hard = heads.p(sig, -2.0)[j], heads.p(sig, 2.0)[j]
    assert p_easy - p_hard > 0.3


def _corrupt(heads: Heads) -> list[tuple[dict[str, np.ndarray], dict[str, object]]]:
    base = heads.to_arrays()
    meta = heads.meta()
    cases = []
    for key, bad in (
        ("intercept", np.full_like(base["intercept"], np.nan)),
        ("sparse_w", base["sparse_w"][:, :1]),
        ("active_ids", base["active_ids"][::-1]),
        ("dense_scale", np.zeros_like(base["dense_scale"])),
        ("label_counts", base["label_counts"].astype(np.float64)),
    ):
        cases.append(({**base, key: bad}, meta))
    cases.append(({k: v for k, v in base.items() if k != "idf"}, meta))
    cases.append((base, {**meta, "version": 99}))
    cases.append((base, {**meta, "models": meta["models"][:1]}))
    cases.append((base, {**meta, "idf_default": "x"}))
    return cases


def test_from_arrays_rejects_corrupt_arrays() -> None:
    texts, kind = _prompts(60, 5)
    labels = [{"A": float(k == 0), "B": 1.0} for k in kind]
    heads = fit_heads(_examples(texts, labels), np.zeros(60), _flat_prior(60))
    for arrays, meta in _corrupt(heads):
        with pytest.raises(ValueError):
            Heads.from_arrays(arrays, meta)


def test_bad_inputs_are_rejected() -> None:
    texts, _ = _prompts(10, 6)
    with pytest.raises(ValueError):
        fit_heads(_examples(texts, [{"A": 2.0}] * 10), np.zeros(10), _flat_prior(10))
    with pytest.raises(ValueError):
        fit_heads(_examples(texts, [{"A": 1.0}] * 10), np.zeros(9), _flat_prior(10))
    with pytest.raises(ValueError):
        fit_heads([], np.zeros(0), _flat_prior(0), LearnerParams())


def _logloss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def test_select_picks_from_the_grid_by_held_out_loss_and_is_deterministic() -> None:
    n = 240
    texts, kind = _prompts(n, 7)
    labels = [{"A": float(k == 0), "B": float(k == 1)} for k in kind]
    exs = [
        Example(signature([{"role": "user", "content": t}]), lab, f"g{i % 6}")
        for i, (t, lab) in enumerate(zip(texts, labels, strict=True))
    ]
    d = np.zeros(n)
    # a clean signal: the weak penalty must win although the strong one comes first
    grid = ((50, 1000.0), (50, 0.1))
    chosen, scores = select_params(exs, d, _flat_prior(n), LearnerParams(), 0, grid)
    assert set(scores) == set(grid) and all(np.isfinite(v) for v in scores.values())
    assert (chosen.rank, chosen.lam_model) == (50, 0.1)
    assert scores[(50, 0.1)] < scores[(50, 1000.0)] - 0.05
    # the default grid: a member is chosen, the same one twice, and fit_heads(select=1)
    # is the fit with the chosen parameters
    chosen, scores = select_params(exs, d, _flat_prior(n), LearnerParams(), 3)
    again, scores2 = select_params(exs, d, _flat_prior(n), LearnerParams(), 3)
    assert (chosen.rank, chosen.lam_model) in SELECT_GRID and set(scores) == set(SELECT_GRID)
    assert chosen == again and scores == scores2 and chosen.select == 0
    assert scores[(chosen.rank, chosen.lam_model)] == min(scores.values())
    sel = fit_heads(exs, d, _flat_prior(n), LearnerParams(select=1), seed=3)
    ref = fit_heads(exs, d, _flat_prior(n), chosen, seed=3)  # the calibration's folds too
    sig = signature([{"role": "user", "content": texts[0]}])
    assert np.allclose(sel.logits(sig, 0.0), ref.logits(sig, 0.0))


def test_model_covariance_lends_a_few_label_model_its_correlated_neighbour() -> None:
    n = 400
    texts, kind = _prompts(n, 8)
    rng = np.random.default_rng(9)
    labels: list[dict[str, float]] = []
    for i, k in enumerate(kind):
        lab = {"A": float(k == 0), "B": float(k == 1)}
        if i < 16:  # C behaves like A but has 16 labels
            lab["C"] = float(k == 0) if rng.random() < 0.9 else float(k == 1)
        labels.append(lab)
    exs = _examples(texts, labels)
    new, new_kind = _prompts(200, 10)
    sigs = [signature([{"role": "user", "content": t}]) for t in new]
    truth = (new_kind == 0).astype(np.float64)
    out = {}
    for cov in ("corr", "none"):
        heads = fit_heads(exs, np.zeros(n), _flat_prior(n), LearnerParams(model_covariance=cov))
        j = heads.index("C")
        assert j is not None
        out[cov] = np.array([heads.p(s, 0.0)[j] for s in sigs])
    gain = {c: p[new_kind == 0].mean() - p[new_kind == 1].mean() for c, p in out.items()}
    loss = {c: _logloss(p, truth) for c, p in out.items()}
    assert gain["corr"] > gain["none"] + 0.1
    assert loss["corr"] < loss["none"] - 0.05


def test_randomized_kernel_path_fits_the_same_heads_as_the_dense_one() -> None:
    import dataclasses

    texts, kind = _prompts(300, 0)
    labels = [{"A": float(k == 0), "B": float(k == 1)} for k in kind]
    exs = _examples(texts, labels)
    dense = fit_heads(exs, np.zeros(300), _flat_prior(300), LearnerParams())
    params = dataclasses.replace(LearnerParams(), exact_kernel_max=100)  # 300 > 100
    randomized = fit_heads(exs, np.zeros(300), _flat_prior(300), params)
    new, new_kind = _prompts(60, 1)
    sigs = [signature([{"role": "user", "content": t}]) for t in new]
    p_dense = np.stack([dense.p(s, 0.0) for s in sigs])
    p_rand = np.stack([randomized.p(s, 0.0) for s in sigs])
    assert np.abs(p_dense - p_rand).max() < 0.05
    ia, ib = randomized.index("A"), randomized.index("B")
    gain = p_rand[:, ia] - p_rand[:, ib]
    assert gain[new_kind == 0].min() > gain[new_kind == 1].max()


def test_a_request_without_words_is_normalised_as_training_normalised_it() -> None:
    """Both blocks l2-normalised on their own (as build_design does), also when one is empty:
    a prompt of punctuation has character n-grams only."""
    from router_models.signature import WORD_BUCKETS

    texts, kind = _prompts(200, 0)
    labels = [{"A": float(k == 0), "B": float(k == 1)} for k in kind]
    heads = fit_heads(_examples(texts, labels), np.zeros(200), _flat_prior(200))
    sig = signature([{"role": "user", "content": "!!! ??? ... ;;; ((( )))"}])
    assert sig.ids.size and not np.any(sig.ids < WORD_BUCKETS)
    _, x = heads._x(sig)
    assert abs(float(np.linalg.norm(x)) - heads.char_weight) < 1e-9
    both = signature([{"role": "user", "content": texts[0]}])
    rows, xb = heads._x(both)
    words = both.ids < WORD_BUCKETS
    assert abs(float(np.linalg.norm(xb[words])) - heads.word_weight) < 1e-9
    assert abs(float(np.linalg.norm(xb[~words])) - heads.char_weight) < 1e-9
    assert rows.shape == xb.shape == both.ids.shape


def test_the_loss_over_labelled_rows_only_fits_what_the_whole_matrix_fits() -> None:
    # traffic's labels: the serving model's, plus a few prompts graded for every model
    rng = np.random.default_rng(11)
    n, m, p = 1500, 6, 40
    feats = rng.normal(size=(n, p))
    mask = np.zeros((n, m), dtype=bool)
    mask[np.arange(n), rng.integers(0, m, n)] = True
    mask[rng.random(n) < 0.03] = True
    mask[:, 5] = False  # a model without a label
    z = feats @ (rng.normal(size=(p, m)) * 0.3)
    # soft labels (graded scores), as records and the files hold
    y = np.where(mask, np.clip(1 / (1 + np.exp(-z)) + rng.normal(size=(n, m)) * 0.2, 0, 1), 0.0)
    offset = rng.normal(size=(n, m)) * 0.2
    params = LearnerParams()
    dense = fit_core(feats, y, mask, offset, 30, params, by_model=False)
    sparse = fit_core(feats, y, mask, offset, 30, params, by_model=True)
    assert np.abs(dense.theta).max() > 0.1  # it learnt something
    assert np.allclose(sparse.theta, dense.theta, atol=1e-8)
    # chosen by itself: labelled rows only for labels this sparse, the whole matrix for full
    # labels (the same values either way)
    b, w = rng.normal(size=m), rng.normal(size=(p, m)) * 0.1
    for cells, chosen in ((mask, "sparse_term"), (np.ones_like(mask), "dense_term")):
        yy = np.where(cells, y, 0.0)
        auto = _data_term(feats, yy, cells, offset, None)
        assert auto.__name__ == chosen
        ref = _data_term(feats, yy, cells, offset, chosen == "dense_term")(b, w)
        got = auto(b, w)
        assert np.isclose(got[0], ref[0], rtol=1e-12)
        assert np.allclose(got[1], ref[1]) and np.allclose(got[2], ref[2])
    # sparse enough, but more than 4 labels per example: its copies would outgrow the
    # features, so the whole matrix
    many = np.zeros((200, 38), dtype=bool)
    many[np.arange(200)[:, None], rng.permuted(np.tile(np.arange(38), (200, 1)), axis=1)[:, :5]] = 1
    assert many.sum() == 5 * 200
    ys = np.where(many, 0.5, 0.0)
    assert _data_term(feats[:200], ys, many, np.zeros((200, 38)), None).__name__ == "dense_term"
