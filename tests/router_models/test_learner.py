from __future__ import annotations

import json

import numpy as np
import pytest

from router_models.learner import Example, Heads, LearnerParams, fit_heads
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
