"""The learner's nearest-neighbour stage (router_models.neighbours)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from router_models.calibration import digest_folds
from router_models.heads import Heads
from router_models.learner import Example, LearnerParams, fit_heads
from router_models.neighbours import Neighbours, fit_neighbours, knn_grid
from router_models.signature import signature
from tests.router_models.test_calibration import WORDS

# a first stage that can learn nothing per prompt: every prompt gets the same P
STIFF = LearnerParams(lam_model=1e4, lam_shared=1e4, calibrate=0)
NB = replace(STIFF, knn="10,20")  # the stage's parameters (fit_neighbours reads only those)
TOPICS = 40
# P(acceptable) of models A and B on each of 40 small workflows, each marked by its own
# words (in ~2.5% of prompts: below knn_max_df) among filler words every workflow shares
RATE = np.random.default_rng(99).choice([0.1, 0.9], size=(TOPICS, 2))


def _topics(n: int, seed: int, noise: bool = False) -> tuple[list[Example], np.ndarray]:
    rng = np.random.default_rng(seed)
    topics = rng.integers(0, TOPICS, n)
    examples = []
    for t in topics:
        words = [*rng.choice(WORDS, 8), f"topic{t}marker", f"case{t}word"]
        rng.shuffle(words)
        rate = (0.5, 0.5) if noise else RATE[t]
        labels = {"A": float(rng.random() < rate[0]), "B": float(rng.random() < rate[1])}
        examples.append(Example(signature([{"role": "user", "content": " ".join(words)}]), labels))
    return examples, topics


def _p_oof(heads: Heads, examples: list[Example]) -> np.ndarray:
    return np.stack([heads.p(e.sig, 0.0) for e in examples])


def _fitted(
    params: LearnerParams = NB, noise: bool = False
) -> tuple[Heads, Heads | None, dict[str, object], list[Example]]:
    examples, _ = _topics(800, 0, noise)
    heads = fit_heads(examples, np.zeros(800), lambda _m: np.zeros(800), STIFF)
    fold = digest_folds(examples, 5, 1)
    nb, report = fit_neighbours(heads, examples, _p_oof(heads, examples), fold, params)
    return heads, None if nb is None else replace(heads, neighbours=nb), report, examples


def _with_neighbours(params: LearnerParams = NB) -> tuple[Heads, Heads, list[Example]]:
    stiff, heads, _, examples = _fitted(params)
    assert heads is not None
    return stiff, heads, examples


def test_neighbours_recover_the_workflows_a_stiff_fit_misses() -> None:
    stiff, heads, report, _ = _fitted()
    assert heads is not None and report["chosen"] in ("k=10", "k=20")
    losses = report["log_loss"]
    assert isinstance(losses, dict)
    assert losses[report["chosen"]] < losses["heads"] - 0.02
    test, topics = _topics(400, 1)
    truth = RATE[topics][:, [heads.models.index("A"), heads.models.index("B")]]
    err = {}
    for name, h in (("stiff", stiff), ("neighbours", heads)):
        p = np.stack([h.p(e.sig, 0.0) for e in test])
        err[name] = float(((p - truth) ** 2).mean())
    assert err["neighbours"] < err["stiff"] * 0.7
    # with less shrinkage to the heads, closer still
    _, sharp, _ = _with_neighbours(replace(NB, knn_alpha=5.0))
    p = np.stack([sharp.p(e.sig, 0.0) for e in test])
    assert float(((p - truth) ** 2).mean()) < err["stiff"] / 3
    # the logits are the heads' own: the blend is applied to P only
    e = test[0]
    assert np.allclose(heads.logits(e.sig, 0.0), stiff.logits(e.sig, 0.0))


def test_no_structure_no_neighbours() -> None:
    _, heads, report, _ = _fitted(noise=True)
    assert heads is None and report["chosen"] is False
    losses = report["log_loss"]
    assert isinstance(losses, dict) and set(losses) == {"heads", "k=10", "k=20"}


def test_blend_formula_subset_and_a_request_sharing_nothing() -> None:
    stiff, heads, examples = _with_neighbours()
    nb = heads.neighbours
    assert nb is not None
    sig = examples[5].sig
    rows, x = heads._x(sig)
    got = nb.sums(rows, x)
    assert got is not None
    s, n = got
    assert np.all(n <= nb.k) and np.all(s <= n)
    p0 = stiff.p(sig, 0.0)
    assert np.allclose(heads.p(sig, 0.0), (s + nb.alpha * p0) / (n + nb.alpha))
    # a route's subset: the same P for its columns, in its order
    only = heads.subset([1, 0])
    assert np.allclose(only.p(sig, 0.0), heads.p(sig, 0.0)[[1, 0]])
    assert np.allclose(heads.p(sig, 0.0, np.array([1])), heads.p(sig, 0.0)[[1]])
    # nothing in common with any reference: the heads' P as it was
    empty = signature([])
    assert np.allclose(heads.p(empty, 0.0), stiff.p(empty, 0.0))


def test_references_are_capped() -> None:
    _, heads, report, _ = _fitted(replace(NB, knn_max_refs=50))
    assert heads is not None and heads.neighbours is not None and heads.neighbours.size == 50
    assert report["references"] == 50


def test_knn_grid() -> None:
    assert knn_grid(LearnerParams()) == []  # off by default
    assert knn_grid(replace(LearnerParams(), knn="10,20")) == [10, 20]
    assert knn_grid(replace(LearnerParams(), knn="30, 5,5")) == [5, 30]
    with pytest.raises(ValueError):
        knn_grid(replace(LearnerParams(), knn="-1"))


def test_fit_heads_runs_the_stage_when_asked() -> None:
    examples, _ = _topics(800, 5)
    d = np.zeros(800)
    on = fit_heads(examples, d, lambda _m: np.zeros(800), replace(LearnerParams(), knn="10,20"))
    assert on.neighbours is not None and on.neighbours.k in (10, 20)
    off = fit_heads(examples, d, lambda _m: np.zeros(800), LearnerParams())
    assert off.neighbours is None
    # the same heads underneath: the stage only blends P
    sig = examples[0].sig
    assert np.allclose(on.logits(sig, 0.0), off.logits(sig, 0.0))


def _round_trip(heads: Heads) -> Heads:
    return Heads.from_arrays(
        {k: np.asarray(v) for k, v in heads.to_arrays().items()},
        json.loads(json.dumps(heads.meta())),
    )


def test_neighbours_survive_the_artifact_arrays() -> None:
    stiff, heads, examples = _with_neighbours()
    assert heads.meta()["version"] == 3
    assert stiff.meta()["version"] == 2  # without neighbours, what older gateways read
    back = _round_trip(heads)
    assert back.neighbours is not None
    for e in examples[:30]:
        assert np.allclose(back.p(e.sig, 0.2), heads.p(e.sig, 0.2), atol=1e-5)


def test_corrupt_neighbour_arrays_are_refused() -> None:
    _, heads, _ = _with_neighbours()
    arrays = {k: np.asarray(v) for k, v in heads.to_arrays().items()}
    meta = json.loads(json.dumps(heads.meta()))
    nb = heads.neighbours
    assert nb is not None
    bad_arrays = [
        {"nb_indptr": arrays["nb_indptr"][:-1]},
        {"nb_refs": np.full_like(arrays["nb_refs"], nb.size)},
        {"nb_vals": np.full(arrays["nb_vals"].shape, np.nan, dtype=np.float32)},
        {"nb_y": arrays["nb_y"] + 2.0},
        {"nb_mask": arrays["nb_mask"] * 3},
        {"nb_indptr": np.append(arrays["nb_indptr"][:-1], arrays["nb_indptr"][-1] + 1)},
        {"nb_y": arrays["nb_y"][:, :1], "nb_mask": arrays["nb_mask"][:, :1]},
    ]
    for change in bad_arrays:
        with pytest.raises(ValueError):
            Heads.from_arrays({**arrays, **change}, meta)
    # the padding row (buckets without weight) must stay empty
    ptr = arrays["nb_indptr"].copy()
    j = int(np.flatnonzero(ptr < ptr[-1]).max())
    ptr[j + 1 : -1] = ptr[j]
    assert ptr[-1] - ptr[-2] > 0
    with pytest.raises(ValueError, match="padding"):
        Heads.from_arrays({**arrays, "nb_indptr": ptr}, meta)
    huge = 10**400  # JSON allows it; float() of it overflows
    for nb_meta in (
        {"k": 0, "alpha": 40.0},
        {"k": 10, "alpha": -1.0},
        {"k": 10},
        "x",
        {"k": 10, "alpha": huge},
        {"k": True, "alpha": 40.0},
    ):
        with pytest.raises(ValueError):
            Heads.from_arrays(arrays, {**meta, "neighbours": nb_meta})
    missing = {k: v for k, v in arrays.items() if k != "nb_refs"}
    with pytest.raises(ValueError):
        Heads.from_arrays(missing, meta)


def test_version_2_heads_still_load_without_neighbours() -> None:
    stiff, heads, examples = _with_neighbours()
    meta = json.loads(json.dumps(stiff.meta()))
    assert meta["version"] == 2 and meta["neighbours"] is None
    back = Heads.from_arrays({k: np.asarray(v) for k, v in stiff.to_arrays().items()}, meta)
    assert back.neighbours is None
    assert np.allclose(back.p(examples[0].sig, 0.0), stiff.p(examples[0].sig, 0.0))
    # a version 2 file knows no neighbours: arrays and meta of them are ignored, not read
    meta3 = {**json.loads(json.dumps(heads.meta())), "version": 2}
    arrays3 = {k: np.asarray(v) for k, v in heads.to_arrays().items()}
    older = Heads.from_arrays(arrays3, meta3)
    assert older.neighbours is None
    assert np.allclose(older.p(examples[0].sig, 0.0), stiff.p(examples[0].sig, 0.0))


def test_a_stage_that_could_not_be_used_is_refused_before_fitting() -> None:
    from router_models.adapt import learner_params
    from router_models.learner import check_knn

    for bad in (
        ["knn=10", "calibrate=0"],
        ["knn=10", "knn_max_refs=0"],
        ["knn=10", "knn_alpha=0"],
        ["knn=10", "knn_alpha=nan"],
        ["knn=10", "knn_max_df=0"],
    ):
        with pytest.raises(ValueError):
            learner_params(bad)
    check_knn(replace(LearnerParams(), calibrate=0))  # the stage off: nothing to check
    examples, _ = _topics(50, 6)
    with pytest.raises(ValueError, match="calibrate"):
        fit_heads(
            examples,
            np.zeros(50),
            lambda _m: np.zeros(50),
            replace(LearnerParams(), knn="10", calibrate=0),
        )


def test_neighbours_do_not_fit_other_heads() -> None:
    _, heads, _ = _with_neighbours()
    nb = heads.neighbours
    assert isinstance(nb, Neighbours)
    with pytest.raises(ValueError):
        replace(heads, neighbours=nb.subset(np.array([0])))
