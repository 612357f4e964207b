"""The floor benchmark runs its three apps under real uvicorn processes and reports them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_floor_script_measures_every_app() -> None:
    cmd = [
        sys.executable, "-m", "benchmarks.floor", "--requests", "20", "--duration", "0.3",
        "--rounds", "1", "--warmup", "2", "--saturation", "4",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    for kind in ("hello", "aiohttp", "httptools"):
        rows = [ln for ln in done.stdout.splitlines() if f"| {kind} |" in ln]
        assert len(rows) == 2, (kind, done.stdout)  # c=1 and saturation
        assert all("| 0 |" in r for r in rows), rows  # no errors
