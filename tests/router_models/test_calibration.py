"""The learner's calibration stage (router_models.calibration) and workflow clusters."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from router_models.calibration import (
    calibrate_heads,
    digest_folds,
    fit_stage,
    grid,
    indicators,
    one_standard_error,
)
from router_models.clusters import fit_clusters
from router_models.heads import Heads
from router_models.learner import Example, LearnerParams, fit_heads
from router_models.signature import signature

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
    "lambda",
    "theta",
    "iota",
    "zeta",
    "eta",
    "nu",
    "mu",
]
# P(acceptable) of two models on three workflows
TRUTH = {"A": (0.9, 0.2, 0.5), "B": (0.2, 0.9, 0.5)}


def _prompt(kind: int, rng: np.random.Generator) -> str:
    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS, n))

    if kind == 0:  # one short line
        return words(6)
    if kind == 1:  # a code-like block
        return "\n".join(f"    {words(3)}({int(rng.integers(100))});" for _ in range(8))
    return "\n".join(f"- {words(4)}?" for _ in range(12))  # a list of questions


def _workflows(n: int, seed: int) -> tuple[list[Example], np.ndarray]:
    rng = np.random.default_rng(seed)
    kinds = rng.integers(0, 3, n)
    examples = [
        Example(
            signature([{"role": "user", "content": _prompt(int(k), rng)}]),
            {m: float(rng.random() < TRUTH[m][int(k)]) for m in TRUTH},
            "g",
        )
        for k in kinds
    ]
    return examples, kinds


def test_clusters_recover_planted_workflows_and_assign_new_requests() -> None:
    examples, kinds = _workflows(300, 0)
    cmap = fit_clusters([e.sig for e in examples], 3, min_df=3, seed=0)
    assert cmap.k == 3
    train = np.array([cmap.assign(e.sig) for e in examples])
    # one cluster per workflow, every training prompt in its workflow's cluster
    of_kind = {k: set(train[kinds == k].tolist()) for k in range(3)}
    assert all(len(v) == 1 for v in of_kind.values())
    assert len(set().union(*of_kind.values())) == 3
    new, new_kinds = _workflows(90, 1)
    for e, k in zip(new, new_kinds, strict=True):
        assert {cmap.assign(e.sig)} == of_kind[int(k)]


def test_stage_recovers_a_models_scale_and_cluster_shifts() -> None:
    rng = np.random.default_rng(0)
    n, k = 20000, 4
    true_logit = rng.normal(0.0, 1.5, (n, 2))
    assign = rng.integers(0, k, n)
    shift = np.array([[1.0, -1.0], [-1.0, 0.5], [0.0, 0.0], [0.5, -0.5]])
    p = 1.0 / (1.0 + np.exp(-(true_logit + shift[assign])))
    y = (rng.random((n, 2)) < p).astype(float)
    # model 0 over-confident (its logits 3x too large), model 1 right
    z = true_logit * np.array([3.0, 1.0])
    st = fit_stage(z, y, np.ones_like(y), indicators(n, [(assign, k)]), lam_a=1.0, lam_e=1.0)
    assert abs(st.a[0] - 1 / 3) < 0.05 and abs(st.a[1] - 1.0) < 0.1
    assert np.abs(st.e + st.c[None, :] - shift).max() < 0.15


def test_stage_learns_the_workflows_a_stiff_fit_misses() -> None:
    examples, _ = _workflows(400, 0)
    d = np.zeros(400)

    def prior(_m: str) -> np.ndarray:
        return np.zeros(400)

    # a first stage that can learn nothing per prompt: every prompt gets the same P
    stiff = LearnerParams(lam_model=1e4, lam_shared=1e4, calibrate=0)
    base = fit_heads(examples, d, prior, stiff)
    heads, report = calibrate_heads(base, examples, d, prior, replace(stiff, calibrate=5), 0)
    assert report["chosen"].startswith("clusters=") and heads.clusters is not None
    assert report["chosen"] != "clusters=0" and not heads.tags  # the examples carry no tags
    assert report["log_loss"][report["chosen"]] < report["log_loss"]["none"] - 0.05
    test, kinds = _workflows(300, 1)
    truth = np.array([[TRUTH[m][int(k)] for m in heads.models] for k in kinds])
    err = {}
    for name, h in (("base", base), ("calibrated", heads)):
        p = np.stack([h.p(e.sig, 0.0) for e in test])
        err[name] = float(((p - truth) ** 2).mean())
    assert err["calibrated"] < err["base"] / 3
    # and the clusters it chose survive the artifact's arrays
    back = Heads.from_arrays(
        {k: np.asarray(v) for k, v in heads.to_arrays().items()},
        json.loads(json.dumps(heads.meta())),
    )
    for e in test[:20]:
        assert np.allclose(back.logits(e.sig, 0.1), heads.logits(e.sig, 0.1), atol=1e-4)


def _clustered_heads() -> tuple[Heads, list[Example]]:
    examples, _ = _workflows(200, 2)
    d = np.zeros(200)
    heads = fit_heads(examples, d, lambda _m: np.zeros(200), LearnerParams(calibrate=0))
    cmap = fit_clusters([e.sig for e in examples], 3, min_df=3, seed=0)
    shifts = np.array([[0.5, -0.5], [-1.0, 1.0], [0.0, 0.25]])
    return replace(heads, clusters=cmap, cluster_w=shifts), examples


def test_cluster_shifts_add_to_the_logits_and_follow_a_subset() -> None:
    heads, examples = _clustered_heads()
    plain = replace(heads, clusters=None, cluster_w=None)
    assert heads.clusters is not None and heads.cluster_w is not None
    for e in examples[:30]:
        k = heads.clusters.assign(e.sig)
        want = plain.logits(e.sig, 0.2) + heads.cluster_w[k]
        assert np.allclose(heads.logits(e.sig, 0.2), want)
        assert np.allclose(heads.logits(e.sig, 0.2, np.array([1])), want[[1]])
        only = heads.subset([1, 0])
        assert np.allclose(only.logits(e.sig, 0.2), want[[1, 0]])
    assert heads.meta()["version"] == 2 and heads.meta()["clusters"] == 3


def test_heads_without_clusters_still_load_as_version_1() -> None:
    heads, examples = _clustered_heads()
    plain = replace(heads, clusters=None, cluster_w=None)
    arrays = {k: np.asarray(v) for k, v in plain.to_arrays().items()}
    meta = {**plain.meta(), "version": 1}
    meta.pop("clusters")
    back = Heads.from_arrays(arrays, meta)
    assert back.clusters is None
    assert np.allclose(back.logits(examples[0].sig, 0.0), plain.logits(examples[0].sig, 0.0))


@pytest.mark.parametrize(
    "change",
    [
        {"cluster_ids": "reversed"},
        {"cluster_centroids": "nan"},
        {"cluster_dense_scale": "zero"},
        {"cluster_w": "short"},
        {"cluster_dense_centroids": "drop"},
        {"meta_clusters": -1},
        {"meta_clusters": 4},
    ],
)
def test_corrupt_cluster_arrays_are_refused(change: dict[str, object]) -> None:
    heads, _ = _clustered_heads()
    arrays = {k: np.asarray(v) for k, v in heads.to_arrays().items()}
    meta = dict(heads.meta())
    ((key, how),) = change.items()
    if key == "meta_clusters":
        meta["clusters"] = how
    elif how == "reversed":
        arrays[key] = arrays[key][::-1]
    elif how == "nan":
        arrays[key] = np.full_like(arrays[key], np.nan)
    elif how == "zero":
        arrays[key] = np.zeros_like(arrays[key])
    elif how == "short":
        arrays[key] = arrays[key][:1]
    else:
        del arrays[key]
    with pytest.raises(ValueError):
        Heads.from_arrays(arrays, meta)


def test_cluster_grid_is_capped_by_the_examples_and_always_offers_none() -> None:
    p = LearnerParams(cluster_grid="16, 64")
    assert grid(p, 2000) == [0, 16, 64]
    assert grid(p, 500) == [0, 16, 20]
    assert grid(p, 30) == [0, 1]
    with pytest.raises(ValueError):
        grid(LearnerParams(cluster_grid="-3"), 100)


def _tagged(n: int, seed: int) -> tuple[list[Example], list[str]]:
    """Prompts of one style whatever the workflow; only the client's tag tells them apart."""
    rng = np.random.default_rng(seed)
    truth = {"chat": {"A": 0.9, "B": 0.3}, "code": {"A": 0.1, "B": 0.8}}
    tags = [("chat", "code")[int(k)] for k in rng.integers(0, 2, n)]
    examples = [
        Example(
            signature([{"role": "user", "content": " ".join(rng.choice(WORDS, 8))}]),
            {m: float(rng.random() < truth[t][m]) for m in ("A", "B")},
            "g",
            t,
        )
        for t in tags
    ]
    return examples, tags


def test_workflow_tags_shift_each_model_and_round_trip() -> None:
    examples, _ = _tagged(400, 3)
    heads = fit_heads(examples, np.zeros(400), lambda _m: np.zeros(400), LearnerParams())
    assert heads.tags == ("chat", "code") and heads.tag_w is not None
    sig = signature([{"role": "user", "content": "alpha beta gamma delta omega sigma tau rho"}])
    ia, ib = heads.index("A"), heads.index("B")
    assert ia is not None and ib is not None
    chat, code, untagged = (heads.p(sig, 0.0, None, t) for t in ("chat", "code", None))
    assert chat[ia] > 0.75 and code[ia] < 0.25 and code[ib] > 0.65 and chat[ib] < 0.45
    # no tag, or one it never saw: no shift
    assert np.allclose(heads.p(sig, 0.0, None, "unseen"), untagged)
    assert code[ia] < untagged[ia] < chat[ia]
    # a route's subset keeps each model's tag shifts; the arrays keep the tags
    assert np.allclose(heads.subset([ib]).p(sig, 0.0, None, "code"), code[[ib]])
    back = Heads.from_arrays(
        {k: np.asarray(v) for k, v in heads.to_arrays().items()},
        json.loads(json.dumps(heads.meta())),
    )
    assert back.tags == heads.tags
    assert np.allclose(back.p(sig, 0.0, None, "code"), code, atol=1e-5)
    for bad in (["chat", "chat"], ["chat", ""], "chat", ["chat", 3]):
        with pytest.raises(ValueError):
            Heads.from_arrays(heads.to_arrays(), {**heads.meta(), "tags": bad})


def test_one_standard_error_keeps_the_simpler_stage_unless_the_richer_one_earns_it() -> None:
    rng = np.random.default_rng(0)
    base = rng.exponential(0.6, 5000)
    size = {"none": 0, "clusters=0": 4, "clusters=16": 36}
    noise = {  # a hair better than the heads as they are: noise, not a gain
        "none": base,
        "clusters=0": base - 0.0005 + rng.normal(0, 0.05, 5000),
        "clusters=16": base + rng.normal(0, 0.05, 5000),
    }
    assert one_standard_error(noise, size) == "none"
    clear = {**noise, "clusters=16": base - 0.05 + rng.normal(0, 0.05, 5000)}
    assert one_standard_error(clear, size) == "clusters=16"


def test_digest_folds_keep_identical_prompts_together() -> None:
    one = signature([{"role": "user", "content": "the same prompt"}])
    other = signature([{"role": "user", "content": "another prompt"}])
    bare = signature([{"role": "user", "content": "the same prompt"}], digest=False)
    examples = [Example(s, {"A": 1.0}) for s in [one] * 5 + [other] * 5 + [bare] * 6]
    fold = digest_folds(examples, 3, 0)
    assert len(set(fold[:5].tolist())) == 1 and len(set(fold[5:10].tolist())) == 1
    # no digest: each its own group, spread over the folds
    assert len(set(fold[10:].tolist())) == 3
