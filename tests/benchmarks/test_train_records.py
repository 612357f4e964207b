"""benchmarks/train_records.py writes gateway records and times a whole effgate train run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import train_records
from router_models.records import load_examples


def test_writes_records_the_trainer_reads_and_times_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train_records.main(["--n", "120", "--keep", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 120 and result["exit_status"] in (0, 3)
    assert result["train_s"] > 0 and result["peak_rss_mb"] > 50  # a Python with numpy
    assert result["verdict"].startswith("verdict: ")
    assert result["wrote_artifact"] == (result["exit_status"] == 0)
    # what it wrote is what a gateway writes: one labelled example per request
    examples, summary = load_examples(tmp_path / "records")
    assert len(examples) == 120 and summary.labels_feedback == 120 and summary.bad_lines == 0
    assert all(len(e.labels) == 1 for e in examples)


def test_max_examples_and_force_reach_effgate_train(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--n", "120", "--max-examples", "100", "--force", "--keep", str(tmp_path)]
    assert train_records.main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["exit_status"] == 0 and result["wrote_artifact"]  # forced, whatever the gate
    meta = json.loads((tmp_path / "artifact" / "metadata.json").read_text())
    assert meta["adapted"]["examples"] == 100
    assert meta["adapted"]["sources"]["records"]["beyond_cap"] == 20
    with pytest.raises(SystemExit):
        train_records.main(["--n", "0"])
