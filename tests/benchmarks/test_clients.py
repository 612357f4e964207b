"""The client-cost comparison runs against a real fake upstream and prints one row per client."""

from __future__ import annotations

import pytest

from benchmarks.clients import main


def test_clients_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--requests", "30", "--concurrency", "1,2", "--cores", "off"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "| client | c=1 us CPU/req | c=2 us CPU/req |"
    rows = {line.split(" | ")[0].strip("| "): line for line in lines[2:]}
    assert set(rows) == {"httpx", "aiohttp", "raw"}
    for line in rows.values():
        cells = [c.strip() for c in line.strip("|").split("|")[1:]]
        assert all(float(c) > 0 for c in cells)
