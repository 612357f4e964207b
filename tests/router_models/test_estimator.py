from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from router_models import ArtifactError, Estimator, load_estimator
from router_models.artifact import METADATA, WEIGHTS, save_artifact
from router_models.estimator import Weights
from router_models.features import FEATURE_VERSION, N_DENSE
from router_models.irt import irt_p

MSG = [{"role": "user", "content": "Compute the integral of x^2 from 0 to 3."}]
TEXTS = (
    "hi",
    "Compute 3.5 * $x^2$ for x = 7?",
    "A. one\nB. two\n" * 20,
    "word " * 900,
    "def f(x):\n    return x == 1;\n",
    "Which city? Who wrote it? Explain why.",
    "",
)


def test_shipped_artifact_loads_and_scores():
    est = load_estimator()
    assert isinstance(est, Estimator)
    assert est.metadata["feature_version"] == FEATURE_VERSION
    files = {e["file"] for e in est.metadata["training_data"]}
    assert files == {"mmlu_pro.jsonl", "llmrouter_train.jsonl"}  # names, never absolute paths
    assert est.discrimination > 0 and len(est.skills) >= 30
    assert "gemini-1.5-pro-002" in est.skills
    d = est.difficulty(MSG)
    assert math.isfinite(d)
    assert 0.0 < est.p_acceptable(MSG, skill=1.3) < 1.0
    assert (
        est.metadata["metrics"]["held_out"]["brier"]
        < est.metadata["metrics"]["held_out"]["brier_constant"]
    )


def test_shipped_artifact_is_small():
    root = Path(__file__).parents[2] / "router_models" / "artifacts" / "default"
    assert sum(p.stat().st_size for p in root.iterdir()) < 300_000


def test_p_acceptable_is_the_irt_link():
    est = load_estimator()
    d, a = est.difficulty(MSG), est.discrimination
    for skill in (-3.0, 0.0, 1.3, 4.0):
        assert est.p_acceptable(MSG, skill) == pytest.approx(1 / (1 + math.exp(-a * (skill - d))))
    assert est.p_acceptable(MSG, d) == pytest.approx(0.5)
    assert est.p_acceptable(MSG, 2.0) > est.p_acceptable(MSG, 1.0)
    assert irt_p(2.0, -1000.0, 0.0) == 0.0 and irt_p(2.0, 1000.0, 0.0) == 1.0


def _weights(bias: float = 0.25) -> Weights:
    rng = np.random.default_rng(0)
    return Weights(
        dense_mean=np.zeros(N_DENSE),
        dense_scale=np.ones(N_DENSE),
        dense_coef=rng.normal(size=N_DENSE),
        intercept=bias,
        scale=1.5,
        shift=-0.2,
    )


def _save(tmp_path: Path) -> Path:
    return save_artifact(
        tmp_path / "art",
        _weights(),
        skills={"m": 0.7},
        discrimination=1.7,
        metadata={"note": "test"},
    )


def test_round_trip(tmp_path):
    path = _save(tmp_path)
    original = Estimator(_weights(), skills={"m": 0.7}, discrimination=1.7)
    loaded = load_estimator(path)
    assert loaded.difficulty(MSG) == pytest.approx(original.difficulty(MSG), rel=1e-6)
    assert loaded.skills == {"m": 0.7} and loaded.discrimination == 1.7
    assert loaded.metadata["note"] == "test"
    with np.load(path / WEIGHTS, allow_pickle=False) as npz:
        assert all(npz[k].dtype != object for k in npz.files)


def test_refuses_wrong_feature_version(tmp_path):
    path = _save(tmp_path)
    meta = json.loads((path / METADATA).read_text())
    meta["feature_version"] = "0"
    (path / METADATA).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="feature version"):
        load_estimator(path)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "garbage_json", "no_meta"])
def test_refuses_corrupt_artifact(tmp_path, damage):
    path = _save(tmp_path)
    weights = path / WEIGHTS
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "flip":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "delete":
        weights.unlink()
    elif damage == "garbage_json":
        (path / METADATA).write_text("{not json")
    else:
        (path / METADATA).unlink()
    with pytest.raises(ArtifactError):
        load_estimator(path)


def test_refuses_bad_arrays_even_with_matching_hash(tmp_path):
    path = _save(tmp_path)
    np.savez(path / WEIGHTS, dense_mean=np.zeros(3))
    meta = json.loads((path / METADATA).read_text())
    from router_models.data import sha256_file

    meta["weights_sha256"] = sha256_file(path / WEIGHTS)
    (path / METADATA).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="unreadable weights"):
        load_estimator(path)


def test_refuses_missing_directory(tmp_path):
    with pytest.raises(ArtifactError, match="missing"):
        load_estimator(tmp_path / "nowhere")


def test_shipped_artifact_copy_loads(tmp_path):
    from router_models.artifact import default_artifact_dir

    copy = tmp_path / "copy"
    shutil.copytree(default_artifact_dir(), copy)
    assert load_estimator(copy).difficulty(MSG) == load_estimator().difficulty(MSG)


def test_folded_fast_path_matches_the_plain_weights():
    from router_models.features import extract

    est = load_estimator()
    assert est.weights.trees is not None
    for text in ("hi", "Compute 3.5 * $x^2$ for x = 7?", "A. one\nB. two\n" * 20, "word " * 900):
        msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
        assert est.difficulty(msgs) == pytest.approx(
            est.weights.difficulty(extract(msgs)), abs=1e-9
        )
    bare = Estimator(_weights(), skills={"m": 0.0}, discrimination=1.0)  # no trees
    assert bare.difficulty(MSG) == pytest.approx(_weights().difficulty(extract(MSG)), abs=1e-9)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_tree_pattern_table_matches_the_level_walk(depth):
    """Random trees of each supported depth: the one-pass pattern lookup and the level-by-level
    walk (Trees.predict) reach the same leaves, including values exactly on a threshold."""
    from router_models.estimator import Trees
    from router_models.features import extract

    rng = np.random.default_rng(depth)
    n_trees, n_internal = 40, (1 << depth) - 1
    dense = np.array([extract([{"role": "user", "content": t}]).dense for t in TEXTS])
    feature = rng.integers(0, N_DENSE, size=(n_trees, n_internal))
    # thresholds drawn from the observed values, so some comparisons are exact ties
    threshold = dense[rng.integers(0, len(TEXTS), size=feature.shape), feature]
    leaf = rng.normal(size=(n_trees, 1 << depth))
    trees = Trees(feature=feature, threshold=threshold, leaf=leaf, depth=depth)
    w = Weights(
        dense_mean=np.zeros(N_DENSE),
        dense_scale=np.ones(N_DENSE),
        dense_coef=np.zeros(N_DENSE),
        intercept=0.25,
        trees=trees,
    )
    est = Estimator(w, skills={"m": 0.0}, discrimination=1.0)
    for text, row in zip(TEXTS, dense, strict=True):
        want = 0.25 + trees.predict(row)
        assert est.difficulty([{"role": "user", "content": text}]) == pytest.approx(want, abs=1e-12)


def test_refuses_trees_deeper_than_the_runtime_supports():
    from router_models.estimator import MAX_TREE_DEPTH, Trees

    depth = MAX_TREE_DEPTH + 1
    n_internal = (1 << depth) - 1
    trees = Trees(
        feature=np.zeros((2, n_internal), dtype=np.int64),
        threshold=np.zeros((2, n_internal)),
        leaf=np.zeros((2, 1 << depth)),
        depth=depth,
    )
    w = Weights(np.zeros(N_DENSE), np.ones(N_DENSE), np.zeros(N_DENSE), 0.0, trees=trees)
    with pytest.raises(ValueError, match="tree depth"):
        Estimator(w, skills={}, discrimination=1.0)


def test_loads_feature_version_5_and_warns_only_for_heads(tmp_path, caplog):
    """Version 5 maps every request without a system prompt as 6 does: its artifacts load;
    heads fitted under it (on recorded traffic that may have had system prompts) are
    flagged for a refit."""
    import logging

    from router_models.learner import Example, fit_heads
    from router_models.signature import signature

    texts = [f"question {i} about {'cats' if i % 2 else 'tax law'}" for i in range(40)]
    examples = [
        Example(signature([{"role": "user", "content": t}]), {"m": float(i % 2)}, "g")
        for i, t in enumerate(texts)
    ]
    heads = fit_heads(examples, np.zeros(40), lambda m: np.zeros(40))
    plain = _save(tmp_path)
    with_heads = save_artifact(
        tmp_path / "heads",
        _weights(),
        skills={"m": 0.7},
        discrimination=1.7,
        metadata={"note": "test"},
        heads=heads,
    )
    for path in (plain, with_heads):
        meta = json.loads((path / METADATA).read_text())
        meta["feature_version"] = "5"
        (path / METADATA).write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="effgate.artifact"):
        assert load_estimator(plain).metadata["feature_version"] == "5"
        assert not caplog.records
        est = load_estimator(with_heads)
    assert est.heads is not None and est.heads.index("m") is not None
    assert len(caplog.records) == 1 and "refit" in caplog.records[0].getMessage()
