"""benchmarks/routing_ab.py times this checkout against another in one run and says whether
they route alike."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks import routing_ab

ROOT = Path(__file__).resolve().parents[2]


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert routing_ab.main([*args, "--n", "60", "--block", "20", "--procs", "1"]) == 0
    out: dict[str, object] = json.loads(capsys.readouterr().out)
    return out


def test_the_same_code_on_both_sides_routes_alike(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run(capsys, "--base-path", str(ROOT))
    assert out["requests"] == 60 and out["processes_per_side"] == 1
    assert out["routed_differently"] == 0
    assert out["max_abs_difficulty_diff"] == 0.0 and out["max_abs_p_diff"] == 0.0
    typical = out["typical_requests"]
    assert isinstance(typical, int) and 0 < typical < 60
    for label in ("typical", "all"):
        block = out[label]
        assert isinstance(block, dict)
        for kind in ("wall", "cpu"):
            this, base, ratio = (block[kind][k] for k in ("this_ms", "base_ms", "ratio"))
            for side in (this, base):
                assert 0 < side["p50"] <= side["p90"] <= side["p99"]
            assert ratio["p50"] == round(this["p50"] / base["p50"], 3)


def test_a_base_that_scores_differently_is_reported(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A copy of the packages whose difficulty is one higher: every request's difficulty
    differs by 1, and the same prompts no longer all go to the same model."""
    for package in ("gateway", "policies", "router_models"):
        shutil.copytree(ROOT / package, tmp_path / package)
    estimator = tmp_path / "router_models" / "estimator.py"
    text = estimator.read_text(encoding="utf-8")
    old = "        total = self.intercept + float(dense @ self.coef)\n"
    assert old in text
    estimator.write_text(text.replace(old, old.replace("self.intercept", "1.0 + self.intercept")))
    out = _run(capsys, "--base-path", str(tmp_path))
    assert out["max_abs_difficulty_diff"] == pytest.approx(1.0)
    routed = out["routed_differently"]
    assert isinstance(routed, int) and routed > 0


def test_a_git_revision_is_checked_out_and_removed(capsys: pytest.CaptureFixture[str]) -> None:
    if not (ROOT / ".git").exists():
        pytest.fail("the tests run from a git checkout (CI clones the repository)")
    before = subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True, check=True
    ).stdout
    out = _run(capsys, "--base", "HEAD")
    assert out["base"] == "HEAD" and out["routed_differently"] == 0
    after = subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert after == before


def test_a_base_that_cannot_run_is_a_clear_failure(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A checkout without the packages: its worker exits, the run says so and returns 1."""
    assert routing_ab.main(["--base-path", str(tmp_path), "--n", "20", "--procs", "1"]) == 1
    assert "the base worker exited" in capsys.readouterr().err
