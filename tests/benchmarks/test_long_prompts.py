"""The long-prompt benchmark runs a real gateway and fake upstream and reports every phase."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.long_prompts import long_text, main


def test_long_text_has_the_asked_length_and_is_deterministic() -> None:
    assert len(long_text(12_345)) == 12_345 and long_text(500) == long_text(500)
    assert long_text(500, seed=1) != long_text(500)


def test_a_short_run_reports_each_phase(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    argv = ["--seconds", "0.5", "--concurrency", "1", "--sizes", "2000", "1000000"]
    assert main([*argv, "--json", str(out)]) == 0
    phases = json.loads(out.read_text(encoding="utf-8"))["phases"]
    assert [p.get("long_chars") for p in phases] == [None, 2000, 1_000_000]
    assert all(p["short_n"] > 0 and p["short_p50_ms"] > 0 for p in phases)
    # the short prompt is served; a megabyte fits no 128,000-token window
    assert phases[1]["long_status"] == [200] and phases[2]["long_status"] == [400]
    table = capsys.readouterr().out
    assert "| none |" in table and "| 1,000,000 chars |" in table


def test_several_long_clients_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    argv = ["--seconds", "0.5", "--concurrency", "1", "--sizes", "300000", "--long-clients", "3"]
    assert main([*argv, "--json", str(out)]) == 0
    phases = json.loads(out.read_text(encoding="utf-8"))["phases"]
    assert phases[1]["long_clients"] == 3 and phases[1]["long_status"] == [200]
    assert len(phases[1]["long_per_client"]) == 3
    assert all(n >= 1 for n in phases[1]["long_per_client"])  # each of the three had answers
    assert "| 300,000 chars, 3 at once |" in capsys.readouterr().out
