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
