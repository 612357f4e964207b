from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from router_models import load_estimator
from router_models.data import LabelMatrix
from router_models.evaluate import main as eval_main
from router_models.irt import calibrate, fit_irt
from router_models.train import main as train_main

from .conftest import MODELS, write_dataset

EASY = [{"role": "user", "content": "Name 3?"}]
HARD = [
    {"role": "user", "content": "Question 9: combine 12 345 678 90 11 22 33 and report the total?"}
]


def test_train_writes_a_loadable_calibrated_artifact(synth_artifact):
    est = load_estimator(synth_artifact)
    meta = est.metadata
    assert meta["training_data"][0]["sha256"] and len(meta["training_data"][0]["sha256"]) == 64
    assert set(est.skills) == set(MODELS)
    assert est.skills["big"] > est.skills["mid"] > est.skills["small"]
    assert est.difficulty(HARD) > est.difficulty(EASY)
    held = meta["metrics"]["held_out"]
    assert held["brier"] < held["brier_constant"]
    assert meta["metrics"]["routing_held_out"]["synth"]["pair"]["strong"] == "big"
    assert len(meta["held_out_ids"]) == meta["rows"]["held_out"] == 24


def test_train_is_deterministic(tmp_path, synth_file, synth_artifact):
    out = tmp_path / "again"
    assert train_main(["--data", str(synth_file), "--out", str(out), "--seed", "3"]) == 0
    assert (out / "weights.npz").read_bytes() == (synth_artifact / "weights.npz").read_bytes()
    a = json.loads((out / "metadata.json").read_text())
    b = json.loads((synth_artifact / "metadata.json").read_text())
    assert a == b


def test_eval_main_reports_and_plots(tmp_path, synth_file, synth_artifact, capsys):
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    rc = eval_main(
        [
            "--data",
            str(synth_file),
            "--artifact",
            str(synth_artifact),
            "--json",
            str(out_json),
            "--plot",
            str(out_png),
        ]
    )
    assert rc == 0
    report = json.loads(out_json.read_text())
    pair = report["pair"]
    # rule: strong = best mean; weak = cheapest priced model >= 0.15 below it
    assert (pair["strong"], pair["weak"]) == ("big", "small")
    assert set(pair["routers"]) >= {
        "estimator",
        "estimator_gain",
        "length",
        "random",
        "oracle_irt",
        "oracle_irt_gain",
    }
    # the gain score beats random on the wide pair; the raw difficulty on the close pair
    assert pair["routers"]["estimator_gain"]["apgr"] > pair["routers"]["random"]["apgr"] + 0.05
    assert [t["weak"] for t in report["pair_table"]] == ["mid", "small"]
    assert report["pair_table"][0]["estimator"] > report["pair_table"][0]["random"] + 0.05
    assert report["pair_table"][1]["estimator"] == pair["routers"]["estimator"]["apgr"]
    multi = report["multi"]
    assert sorted(multi["models"]) == ["big", "mid", "small"]
    assert len(multi["routers"]["estimator"]["curve"]) == 19
    assert set(multi["routers"]) == {"estimator", "length", "random", "oracle_irt"}
    assert multi["best_single"]["model"] == "big"
    # the estimator's curve reaches the best single model's quality for less than its cost
    share = multi["routers"]["estimator"]["cost_share_of_best"]
    assert share is not None and share < 1.0
    assert 0.0 < multi["routers"]["estimator"]["aiq"] <= multi["best_single"]["quality"]
    assert out_png.read_bytes()[:4] == b"\x89PNG"
    text = capsys.readouterr().out
    assert "APGR" in text and "AIQ" in text and "pair table" in text


def test_eval_with_explicit_pair_and_held_out(synth_file, synth_artifact, tmp_path):
    out = tmp_path / "r.json"
    rc = eval_main(
        [
            "--data",
            str(synth_file),
            "--artifact",
            str(synth_artifact),
            "--held-out",
            "--strong",
            "mid",
            "--weak",
            "small",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["rows"] == 24 and report["pair"]["weak"] == "small"


def test_eval_errors_are_reported(synth_file, synth_artifact, tmp_path, capsys):
    assert eval_main(["--data", str(synth_file), "--strong", "big"]) == 2
    assert (
        eval_main(
            [
                "--data",
                str(synth_file),
                "--artifact",
                str(synth_artifact),
                "--strong",
                "big",
                "--weak",
                "nope",
            ]
        )
        == 1
    )
    assert eval_main(["--data", str(synth_file), "--artifact", str(tmp_path)]) == 1
    assert "missing" in capsys.readouterr().err


def test_eval_leaves_out_unpriced_models(tmp_path, synth_artifact):
    path = write_dataset(tmp_path / "d.jsonl", n=60, seed=5)
    prices_path = tmp_path / "d.models.json"
    prices = json.loads(prices_path.read_text())
    prices["mid"]["input_usd_per_mtok"] = None
    prices_path.write_text(json.dumps(prices))
    out = tmp_path / "r.json"
    assert (
        eval_main(["--data", str(path), "--artifact", str(synth_artifact), "--json", str(out)]) == 0
    )
    assert json.loads(out.read_text())["multi"]["left_out"] == ["mid"]


def _partial_file(
    path: Path, scored: dict[str, range | list[int]], prices: dict[str, float]
) -> Path:
    """120 rows; each model scored on its own rows only (``scored``), priced per ``prices``
    (input = output USD per Mtok)."""
    rng = np.random.default_rng(9)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(120):
            models = {
                m: {"score": float(rng.random() < 0.3 + 0.2 * k), "cost_usd": None,
                    "input_tokens": 20, "output_tokens": 40, "output_chars": None}
                for k, (m, rows) in enumerate(scored.items()) if i in rows
            }  # fmt: skip
            prompt = f"Question {i}: " + " ".join(["word"] * int(rng.integers(1, 30)))
            fh.write(json.dumps({"id": f"p:{i}", "source": "p", "task": "t", "prompt": prompt,
                                 "models": models}) + "\n")  # fmt: skip
    table = {m: {"input_usd_per_mtok": c, "output_usd_per_mtok": c, "source": "test"}
             for m, c in prices.items()}  # fmt: skip
    path.with_name(path.stem + ".models.json").write_text(json.dumps(table), encoding="utf-8")
    return path


def test_eval_pairs_only_models_scored_on_the_same_rows(tmp_path, synth_artifact):
    """Models that each label part of the rows: a pair (and a pair-table partner) must share
    rows with the strong model, the many-model table leaves out models until the rest share
    rows, and a table of fewer than two priced models is a note, not a failure."""
    # S (the best) on rows 0-59, W on every row, X (no row with S) on rows 60-119
    path = _partial_file(
        tmp_path / "d.jsonl",
        {"W": range(120), "X": range(60, 120), "S": range(60)},
        {"W": 0.1, "X": 0.5, "S": 5.0},
    )
    out = tmp_path / "r.json"
    args = ["--data", str(path), "--artifact", str(synth_artifact), "--json", str(out)]
    assert eval_main(args) == 0
    report = json.loads(out.read_text())
    assert (report["pair"]["strong"], report["pair"]["weak"]) == ("S", "W")
    assert [t["weak"] for t in report["pair_table"]] == ["W"]  # X never scored with S
    # three models on two thirds of the rows each, no row with all three: one is left out
    # (the last of equals), and the other two share a third of the rows
    path = _partial_file(
        tmp_path / "e.jsonl",
        {"A": range(80), "B": range(40, 120), "C": [*range(40), *range(80, 120)]},
        {"A": 0.1, "B": 1.0, "C": 5.0},
    )
    args = ["--data", str(path), "--artifact", str(synth_artifact), "--json", str(out)]
    assert eval_main(args) == 0
    multi = json.loads(out.read_text())["multi"]
    assert (multi["models"], multi["left_out"], multi["rows_used"]) == (["A", "B"], ["C"], 40)
    assert "routers" in multi
    # one priced model: a note, not a failure
    path = _partial_file(tmp_path / "f.jsonl", {"S": range(120), "W": range(120)}, {"W": 0.1})
    args = ["--data", str(path), "--artifact", str(synth_artifact), "--json", str(out)]
    assert eval_main(args) == 0
    multi = json.loads(out.read_text())["multi"]
    assert multi["models"] == ["W"] and "routers" not in multi
    assert "fewer than two priced models" in multi["note"]


def test_train_usage_errors(tmp_path, capsys):
    assert train_main(["--out", str(tmp_path / "x")]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x:1"}\n')
    assert train_main(["--data", str(bad), "--out", str(tmp_path / "y")]) == 1
    assert "bad row" in capsys.readouterr().err


def test_irt_recovers_order_and_calibration_is_consistent():
    rng = np.random.default_rng(0)
    d = rng.normal(size=400)
    skills = np.array([1.0, 0.0, -1.0])
    p = 1 / (1 + np.exp(-2.0 * (skills[None, :] - d[:, None])))
    y = (rng.random(p.shape) < p).astype(float)
    mask = rng.random(p.shape) < 0.9
    labels = LabelMatrix(models=("a", "b", "c"), scores=np.where(mask, y, 0.0), mask=mask)
    fit = fit_irt(labels)
    assert fit.skills["a"] > fit.skills["b"] > fit.skills["c"]
    assert np.corrcoef(fit.difficulty, d)[0, 1] > 0.7
    assert fit.difficulty.std() == pytest.approx(1.0)
    cal = calibrate(fit.difficulty, labels)
    assert cal.discrimination > 0 and cal.skills["a"] > cal.skills["c"]
    anchored = fit_irt(labels, anchors={"a": 5.0}, anchor_discrimination=1.0)
    assert anchored.skills["a"] == 5.0 and anchored.discrimination == 1.0
    with pytest.raises(ValueError):
        fit_irt(labels, anchors={"a": 5.0})


def test_select_compares_recipes_leave_task_out(tmp_path, capsys):
    from router_models.__main__ import main as cli
    from router_models.selection import group_folds

    folds = group_folds(["a"] * 5 + ["b"] * 3 + ["c"] * 3 + ["d"], k=2)
    assert folds.tolist() == [0] * 5 + [1] * 3 + [1] * 3 + [0]  # whole tasks, balanced
    rows = [
        json.loads(x) for x in write_dataset(tmp_path / "s.jsonl", n=120).read_text().splitlines()
    ]
    for i, row in enumerate(rows):
        row["task"] = f"t{i % 4}"
    (tmp_path / "s.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert cli(["select", "--data", str(tmp_path / "s.jsonl"), "--folds", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 task folds" in out and "ridge+trees+len0.5" in out and "oracle IRT" in out
