"""A short soak through the benchmark's own entry point: several tenants, JSON and streams,
upstream faults, and Redis killed and restarted mid-run."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.soak import main as soak


def test_a_short_soak_loses_nothing_and_holds_every_budget(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    argv = ["--rate", "15", "--duration", "10", "--fault-share", "0.15", "--json", str(out)]
    assert soak(argv + ["--small-budget", "1e-4"]) == 0
    result = json.loads(out.read_text())
    assert result["problems"] == []
    assert result["records"]["request"] == result["answered"] == result["sent"] > 80
    causes = result["causes"]
    assert causes.get("200 ok", 0) > 40
    assert causes.get("429 budget_exceeded", 0) > 0, "the small budget ran out"
    assert any(not c.startswith("200") and "budget" not in c for c in causes), causes
    assert [e for _, e in result["events"]] == ["redis killed", "redis started"]
    small = result["budgets"]["tenant-2"]
    assert 0 < small["spent_usd"] <= small["budget_usd"] == 1e-4
    assert result["gateway_exit_code"] == 0
