"""End to end: the benchmark script with tiny numbers starts real processes and prints its tables.

Slow by nature (it starts the gateway and two fakes as subprocesses), so the numbers are tiny;
what it proves is that the script runs, measures every scenario on every target, and reports.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.overhead import main

ROOT = Path(__file__).resolve().parents[2]


def test_overhead_script_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    cmd = [
        sys.executable, "-m", "benchmarks.overhead",
        "--requests", "20", "--stream-requests", "4", "--duration", "0.3",
        "--concurrency", "1,2", "--saturation", "4", "--rounds", "2", "--warmup", "2",
        "--stream-tokens-per-s", "2000", "--json", str(out), "--keep", str(tmp_path / "work"),
    ]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert time.monotonic() - started < 60
    md = done.stdout
    for heading in (
        "### Targets",
        "### Process",
        "### Latency, JSON",
        "### Streaming",
        "### Saturation throughput",
    ):
        assert heading in md
    assert "| json/routed | 2 | gateway |" in md

    doc = json.loads(out.read_text())
    assert doc["machine"]["nproc"] >= 1
    assert doc["estimator"]["artifact"]
    assert {(r["scenario"], r["concurrency"], r["target"]) for r in doc["latency"]} == {
        (s, c, t) for s in ("json/passthrough", "json/routed") for c in (1, 2)
        for t in ("direct", "gateway")
    }  # fmt: skip
    assert len(doc["stream"]) == 8
    # json passthrough and routed, and relayed streams, each direct and through the gateway
    assert {(r["scenario"], r["target"]) for r in doc["saturation"]} == {
        (s, t) for s in ("json/passthrough", "json/routed", "stream/passthrough")
        for t in ("direct", "gateway")
    }  # fmt: skip
    for row in doc["latency"] + doc["stream"]:
        expected = 20 if row["scenario"].startswith("json") else 4
        assert (row["count"], row["errors"]) == (expected, 0), row
        assert 0 < row["first_p50_ms"] <= row["p50_ms"]
        assert row["server_cpu_ms_per_request"] is not None
    for row in doc["saturation"]:
        assert row["count"] > 0 and row["errors"] == 0 and row["rps"] > 0
    gateway = doc["process"]["gateway"]
    assert 0 < gateway["start_to_first_served_s"] < 60
    assert gateway["idle_rss_mb"] > 10
    assert {c["name"] for c in doc["checks"]} == {
        "added latency p50, JSON passthrough, c=1",
        "added latency p99, JSON passthrough, c=1",
        "routed (estimator + decide) over passthrough, p50, c=1",
        "added TTFT p50, stream passthrough, c=1",
        "saturation throughput, json passthrough, gateway on one core",
        "saturation throughput, stream passthrough, gateway on one core",
        "saturation throughput vs LiteLLM proxy (same core)",
        "idle RSS",
        "start to first served request",
    }
    assert (tmp_path / "work" / "policy.yaml").is_file()
    # the gateway wrote its request records where it was told to
    assert any((tmp_path / "work" / "records").iterdir())


def test_bad_cores_spec_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--cores", "x"]) == 2
    assert "--cores" in capsys.readouterr().err
