"""benchmarks/train_scale.py fits the learner in a fresh process per size and reports it."""

from __future__ import annotations

import json

import pytest

from benchmarks import train_scale


def test_reports_each_size_from_its_own_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert train_scale.main(["--n", "150", "200"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    runs = lines[-1]["runs"]
    assert [r["n"] for r in runs] == [150, 200] and lines[:2] == runs
    for r in runs:
        assert r["kernel"] == "dense"  # below exact_kernel_max
        assert r["fit_s"] > 0 and r["peak_rss_mb"] >= r["rss_before_fit_mb"] > 0
        assert r["models"] > 1  # both files' models, shuffled together


def test_heldout_rows_are_scored_and_learner_fields_reach_the_fit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    runs = []
    for n_iter in ("0", "7"):
        argv = ["--n", "300", "--heldout", "120", "--learner", "exact_kernel_max=100"]
        assert train_scale.main([*argv, "--learner", f"rsvd_iter={n_iter}"]) == 0
        runs.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"][0])
    for r in runs:
        assert r["kernel"] == "randomized SVD"  # above the exact_kernel_max it was given
        held = r["heldout"]
        assert held["labels"] >= 120  # every held-out row has at least one label
        assert 0.0 < held["brier"] < 0.5 and 0.0 < held["log_loss"] < 2.0
    # the power iterations change the basis, so the held-out figures
    assert runs[0]["heldout"] != runs[1]["heldout"]


def test_bad_learner_fields_and_too_many_heldout_rows_fail_cleanly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as bad:
        train_scale.main(["--n", "100", "--learner", "no_such_field=1"])
    assert bad.value.code == 2 and "no_such_field" in capsys.readouterr().err
    for argv, said in (
        (["--learner", "rsvd_iter=-1"], "rsvd_iter"),
        (["--heldout", "-5"], "heldout"),
    ):
        with pytest.raises(SystemExit) as refused:
            train_scale.main(["--n", "100", *argv])
        assert refused.value.code == 2 and said in capsys.readouterr().err
    assert train_scale.main(["--n", "100", "--heldout", "100000"]) == 1
    assert "the files hold only" in capsys.readouterr().err


def test_one_label_keeps_a_single_label_per_example(capsys: pytest.CaptureFixture[str]) -> None:
    counts = []
    for extra in ([], ["--one-label"]):
        assert train_scale.main(["--n", "150", *extra]) == 0
        counts.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"][0])
    assert counts[0]["labels"] > 5 * 150  # each row labels all of its file's models
    assert counts[1]["labels"] == 150 and counts[1]["models"] > 1
