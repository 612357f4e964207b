"""The learner's calibration stage (router_models.calibration) and workflow clusters."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from router_models.calibration import (
    _oof_prior,
    calibrate_heads,
    digest_folds,
    fit_stage,
    grid,
    indicators,
    one_standard_error,
    shrink_to_prior,
    shrunk_heads,
)
from router_models.clusters import fit_clusters
from router_models.design import example_labels, prior_offsets, unknown_offsets
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


def _bernoulli(logit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out: np.ndarray = (rng.random(np.shape(logit)) < 1.0 / (1.0 + np.exp(-logit))).astype(float)
    return out


def test_shrink_keeps_a_real_departure_from_the_prior_and_drops_noise() -> None:
    rng = np.random.default_rng(0)
    prior = rng.normal(0.0, 1.0, (4000, 3))
    shared = rng.normal(0.0, 1.0, (4000, 1))  # moves every model's logit alike
    own = rng.normal(0.0, 1.5, (4000, 3))
    own -= own.mean(axis=1, keepdims=True)
    z = prior + shared + own
    w = np.ones_like(prior)
    # the labels follow the heads: their departure from the prior is all signal
    beta, loss = shrink_to_prior(z, prior, _bernoulli(z, rng), w, 10)
    assert beta == (1.0, 1.0) and loss["1.0,1.0"] < loss["0.5,0.5"] < loss["0.0,0.0"]
    # the labels follow the prior: the departure is noise
    beta, loss = shrink_to_prior(z, prior, _bernoulli(prior, rng), w, 10)
    assert max(beta) <= 0.1 and loss["0.0,0.0"] < loss["1.0,1.0"] - 0.1
    # half of it is real: the heads as they are still beat the prior, and stay
    beta, loss = shrink_to_prior(z, prior, _bernoulli(prior + 0.5 * (z - prior), rng), w, 10)
    assert beta == (1.0, 1.0) and loss["1.0,1.0"] < loss["0.0,0.0"]
    # a quarter of it is real: the heads lose to the prior, and are scaled back
    beta, loss = shrink_to_prior(z, prior, _bernoulli(prior + 0.25 * (z - prior), rng), w, 10)
    assert 0.1 <= beta[0] <= 0.4 and 0.1 <= beta[1] <= 0.4 and loss["1.0,1.0"] > loss["0.0,0.0"]
    # which model does better is real, the difficulty the heads learnt is noise
    loud = prior + 3.0 * shared + own
    beta, _ = shrink_to_prior(loud, prior, _bernoulli(prior + own, rng), w, 10)
    assert beta[0] <= 0.1 and beta[1] >= 0.9
    # the other way round the models' own part is never shrunk more than the shared one
    loud = prior + shared + 3.0 * own
    beta, loss = shrink_to_prior(loud, prior, _bernoulli(prior + shared, rng), w, 10)
    assert beta[0] <= beta[1] < 1.0 and "1.0,0.0" not in loss
    # unlabelled pairs do not count; steps 0 turns it off
    y = _bernoulli(z, rng)
    y[:, 0] = _bernoulli(prior[:, 0] - own[:, 0] - shared[:, 0], rng)
    w[:, 0] = 0.0
    assert shrink_to_prior(z, prior, y, w, 10)[0] == (1.0, 1.0)
    assert shrink_to_prior(z, prior, y, w, 0) == ((1.0, 1.0), {})
    # nothing labelled, or logits that are not numbers: the heads as they are
    assert shrink_to_prior(z, prior, y, np.zeros_like(w), 10) == ((1.0, 1.0), {})
    bad = z.copy()
    bad[0, 1] = np.nan
    assert shrink_to_prior(bad, prior, y, w, 10) == ((1.0, 1.0), {})
    # one model has no part of its own: its beta is the shared one
    one = shrink_to_prior(z[:, :1], prior[:, :1], _bernoulli(prior[:, :1], rng), w[:, :1] + 1, 10)
    assert one[0][0] == one[0][1] <= 0.1


def test_shrunk_heads_move_each_part_of_the_logits_toward_the_prior() -> None:
    examples, _ = _workflows(200, 3)
    rng = np.random.default_rng(3)
    d = rng.normal(0.0, 1.0, 200)
    prior = {"A": 0.5 - 1.2 * d, "B": -0.3 - 0.8 * d}
    heads = fit_heads(examples, d, prior, LearnerParams(calibrate=0))
    models, y, mask = example_labels(examples)
    off_c, off_g = prior_offsets(models, y, mask, d, prior)
    assert np.allclose(off_c, [0.5, -0.3]) and np.allclose(off_g, [-1.2, -0.8])
    assert shrunk_heads(heads, (1.0, 1.0), off_c, off_g) is heads
    with pytest.raises(ValueError, match="before the calibration"):
        shrunk_heads(_clustered_heads()[0], (0.5, 0.5), off_c, off_g)
    new, _ = _workflows(30, 4)
    for betas in ((0.5, 0.5), (0.0, 1.0), (0.25, 0.75), (0.0, 0.0)):
        shrunk = shrunk_heads(heads, betas, off_c, off_g)
        for e in new:
            for dd in (-1.0, 0.0, 2.0):
                r = heads.logits(e.sig, dd) - (off_c + off_g * dd)
                want = off_c + off_g * dd + betas[0] * r.mean() + betas[1] * (r - r.mean())
                assert np.allclose(shrunk.logits(e.sig, dd), want)


def test_heads_fitted_on_noise_are_shrunk_to_the_prior() -> None:
    examples, _ = _workflows(300, 5)
    rng = np.random.default_rng(5)
    # each model's prior logit c + g d
    c, g = {"A": 0.4, "B": -0.4}, {"A": -1.0, "B": -0.5}
    d = rng.normal(0.0, 1.0, 300)
    prior_logit = {m: c[m] + g[m] * d for m in TRUTH}
    # the labels follow the prior: whatever the heads add to it is noise
    noisy = [
        replace(e, labels={m: float(_bernoulli(prior_logit[m][i], rng)) for m in TRUTH})
        for i, e in enumerate(examples)
    ]
    loose = LearnerParams(lam_shared=0.05, lam_model=0.05, lam_bias=0.05, calibrate=0)
    raw = fit_heads(noisy, d, prior_logit, loose)
    _, report0 = calibrate_heads(
        raw, noisy, d, prior_logit, replace(loose, calibrate=5, prior_shrink=0), 0
    )
    shrunk, report = calibrate_heads(
        raw, noisy, d, prior_logit, replace(loose, calibrate=5, prior_shrink=10), 0
    )
    assert report0["beta"] == (1.0, 1.0) and report0["beta_log_loss"] == {}
    assert max(report["beta"]) <= 0.3
    loss = report["beta_log_loss"]
    assert loss["{},{}".format(*report["beta"])] < loss["1.0,1.0"]
    # the stage after it is fitted on the scaled-back logits
    assert report["log_loss"]["none"] == pytest.approx(loss["{},{}".format(*report["beta"])])
    # on new prompts the shrunk heads are nearer the prior than the heads as they were
    new, _ = _workflows(200, 6)
    dn = rng.normal(0.0, 1.0, 200)
    prior_new = np.stack([c[m] + g[m] * dn for m in raw.models], axis=1)
    far = {
        name: float(
            np.abs(
                np.stack([h.logits(e.sig, float(x)) for e, x in zip(new, dn, strict=True)])
                - prior_new
            ).mean()
        )
        for name, h in (("raw", raw), ("shrunk", shrunk))
    }
    assert far["shrunk"] < far["raw"] / 2


def test_a_model_the_prior_does_not_know_starts_from_its_other_folds_mean() -> None:
    y = np.array([[1, 1], [1, 0], [0, 1], [1, 1], [0, 0], [1, 1]], dtype=float)
    mask = np.ones_like(y, dtype=bool)
    mask[5, 1] = False  # unlabelled: does not count
    fold = np.array([0, 0, 1, 1, 2, 2])
    pz = np.full((6, 2), 0.25)
    d = np.zeros(6)
    out = _oof_prior(("A", "B"), pz, y, mask, d, fold, {"A": np.zeros(6)}, np.zeros(2))
    assert (out[:, 0] == 0.25).all()  # known to the prior: as it was
    # fold 0: B's labels in folds 1 and 2 are 1, 1, 0 (row 5 unlabelled): (2 + 1) / (3 + 2)
    for k, (ones, seen) in enumerate([(2, 3), (1, 3), (3, 4)]):
        mean = (ones + 1) / (seen + 2)
        assert np.allclose(out[fold == k, 1], np.log(mean / (1 - mean)))


def test_models_the_prior_does_not_know_get_the_other_folds_offsets_with_a_slope() -> None:
    rng = np.random.default_rng(11)
    n = 600
    d = rng.normal(0.0, 1.5, n)
    z = np.array([0.8, -0.4])[None, :] - 0.9 * d[:, None]
    y = (rng.random((n, 2)) < 1.0 / (1.0 + np.exp(-z))).astype(np.float64)
    mask = rng.random((n, 2)) < 0.7
    fold = np.arange(n) % 3
    pz = np.zeros((n, 2))
    # neither known: each fold's offsets are those of the other folds' labels, one pooled slope
    out = _oof_prior(("U", "V"), pz, y, mask, d, fold, {}, np.zeros(2))
    for k in range(3):
        tr, te = fold != k, fold == k
        c, g = unknown_offsets(y[tr], mask[tr], d[tr], None)
        assert np.allclose(out[te], c[None, :] + d[te, None] * g[None, :])
        assert -1.2 < g[0] < -0.6 and g[0] == g[1]
    # one known (slope -0.5): the unknown one takes the known slope in every fold
    out = _oof_prior(("K", "V"), pz, y, mask, d, fold, {"K": -0.5 * d}, np.array([-0.5, 0.0]))
    assert (out[:, 0] == 0.0).all()
    for k in range(3):
        te = fold == k
        assert np.allclose(np.diff(out[te, 1]) / np.diff(d[te]), -0.5)
