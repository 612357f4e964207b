"""The label-oracle ceilings: the 2PL fit, per-item slopes, and the ceilings command."""

from __future__ import annotations

import numpy as np
import pytest

from router_models.ceilings import ceilings, fit_2pl, pair_left_out_gain, skill_slopes
from router_models.data import LabelMatrix
from router_models.irt import sigmoid
from tests.router_models.conftest import write_dataset

SKILLS = np.array([-1.5, -0.8, -0.2, 0.3, 0.8, 1.4, 2.0, 2.6])
NAMES = tuple(f"m{j}" for j in range(len(SKILLS)))


def _two_pl(n: int = 600, seed: int = 7) -> tuple[LabelMatrix, np.ndarray, np.ndarray]:
    """Labels drawn from a 2PL model: half the items barely discriminate."""
    rng = np.random.default_rng(seed)
    alpha = np.where(rng.random(n) < 0.5, 0.2, 3.0)
    beta = rng.normal(0.5, 1.2, n)
    p = sigmoid(alpha[:, None] * (SKILLS[None, :] - beta[:, None]))
    y = (rng.random(p.shape) < p).astype(np.float64)
    return LabelMatrix(NAMES, y, np.ones_like(y, dtype=bool)), alpha, beta


def test_2pl_fit_recovers_which_items_discriminate() -> None:
    labels, alpha, _ = _two_pl()
    fitted, _, theta = fit_2pl(labels)
    assert fitted[alpha > 1].mean() > 1.4 * fitted[alpha < 1].mean()
    order = [theta[m] for m in NAMES]
    assert np.corrcoef(order, SKILLS)[0, 1] > 0.95


def test_skill_slopes_by_hand() -> None:
    y = np.array([[0.0, 0.5, 1.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    mask = np.array([[True, True, True], [True, True, True], [True, False, True]])
    labels = LabelMatrix(("a", "b", "c"), y, mask)
    slopes = skill_slopes(labels, {"a": 0.0, "b": 1.0, "c": 2.0})
    # row 3 uses a and c only: labels 1 -> 0 over skills 0 -> 2
    assert slopes == pytest.approx([0.5, 0.0, -0.5])


def test_ceilings_rank_the_label_oracles_above_random() -> None:
    labels, _, _ = _two_pl()
    lengths = np.asarray(np.random.default_rng(5).random(labels.scores.shape[0]), dtype=np.float64)
    pairs = [("m7", "m1"), ("m6", "m3")]
    table = ceilings(labels, pairs, lengths)
    assert set(table) == {
        "random",
        "length",
        "1pl d",
        "1pl gain",
        "2pl gain",
        "slope",
        "2pl gain, pair left out",
    }
    assert all(len(v) == 2 for v in table.values())
    for name in ("2pl gain", "slope", "2pl gain, pair left out"):
        assert np.mean(table[name]) > np.mean(table["random"]) + 0.1, name
    left_out = pair_left_out_gain(labels, "m7", "m1")
    assert left_out.shape == (labels.scores.shape[0],) and np.all(np.abs(left_out) <= 1)


def test_ceilings_command_prints_every_score(tmp_path, capsys) -> None:
    from router_models.__main__ import main

    path = write_dataset(tmp_path / "c.jsonl", n=120)
    assert main(["ceilings", "--data", str(path)]) == 0
    out = capsys.readouterr().out
    assert "strong big" in out and "2pl gain, pair left out" in out
    assert main(["ceilings", "--data", str(tmp_path / "missing.jsonl")]) == 1
