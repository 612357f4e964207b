"""Percentiles, deltas against the direct baseline, the targets' verdicts and the tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.checks import LIMITS, calibrate, checks, machine
from benchmarks.loadgen import Sample
from benchmarks.procs import Pinning
from benchmarks.report import (
    Row,
    Stats,
    Tables,
    checks_table,
    latency_table,
    percentile,
    saturation_table,
    stream_table,
)


@pytest.mark.parametrize("q", [0, 1, 50, 90, 99, 100])
def test_percentile_matches_numpy(q: float) -> None:
    values = [0.3, 0.1, 0.9, 0.4, 0.25, 2.0, 0.05]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(percentile([], 50))


def _sample(ms: list[float], elapsed_s: float = 1.0, cpu_s: float = 0.5) -> Sample:
    lat = tuple(x / 1000 for x in ms)
    return Sample(lat, tuple(x / 2 for x in lat), errors=1, elapsed_s=elapsed_s, server_cpu_s=cpu_s)


def test_stats_pool_rounds() -> None:
    stats = Stats.of([_sample([1.0, 2.0]), _sample([3.0, 4.0, 5.0])])
    assert stats.count == 5
    assert stats.errors == 2
    assert stats.p50_ms == pytest.approx(3.0)
    assert stats.first_p50_ms == pytest.approx(1.5)
    assert stats.rps == pytest.approx(2.5)  # 5 requests in 2 s
    assert stats.cpu_ms == pytest.approx(200.0)  # 1 s of CPU over 5 requests


def _row(
    scenario: str,
    target: str,
    ms: list[float],
    direct_ms: list[float],
    conc: int = 1,
    elapsed_s: float = 1.0,
) -> Row:
    return Row(
        scenario, conc, target, Stats.of([_sample(ms, elapsed_s)]), Stats.of([_sample(direct_ms)])
    )


def test_row_adds_at_matched_percentiles() -> None:
    row = _row("json/passthrough", "gateway", [2.0, 2.0, 2.0], [1.0, 1.0, 1.0])
    assert row.added_p50_ms == pytest.approx(1.0)
    assert row.added_p99_ms == pytest.approx(1.0)
    assert row.added_first_p50_ms == pytest.approx(0.5)
    doc = row.as_json()
    assert doc["added_p50_ms"] == pytest.approx(1.0)
    assert doc["rps_ratio_to_direct"] == pytest.approx(1.0)


def test_checks_judge_each_target() -> None:
    fast, slow = [1.2] * 10, [5.0] * 10
    direct = [1.0] * 10
    tables = Tables(
        latency=[
            _row("json/passthrough", "gateway", fast, direct),
            _row("json/routed", "gateway", slow, direct),
        ],
        stream=[_row("stream/passthrough", "gateway", fast, direct)],
        saturation=[
            _row("json/passthrough", "gateway", fast, direct, 64, elapsed_s=0.1),
            _row("json/passthrough", "litellm", slow, direct, 64, elapsed_s=1.0),
            _row("stream/passthrough", "gateway", fast, direct, 64, elapsed_s=1.0),
        ],
    )
    process = {"gateway": {"idle_rss_mb": 100.0, "start_to_first_served_s": 3.0}}
    verdicts = {c.name: c.ok for c in checks(tables, process)}
    assert verdicts["added latency p50, JSON passthrough, c=1"] is True
    # routed p50 5.0 ms against passthrough 1.2 ms: 3.8 ms of routing, over the 0.25 ms
    assert verdicts["routed (estimator + decide) over passthrough, p50, c=1"] is False
    assert verdicts["added TTFT p50, stream passthrough, c=1"] is True
    assert verdicts["saturation throughput vs LiteLLM proxy (same core)"] is False  # 10x < 25x
    # 10 requests in 0.1 s and 10 streams in 1 s
    assert verdicts["saturation throughput, json passthrough, gateway on one core"] is False
    assert verdicts["saturation throughput, stream passthrough, gateway on one core"] is False
    assert verdicts["idle RSS"] is True
    assert verdicts["start to first served request"] is False
    assert LIMITS["start_s"] == 2.0


def test_checks_without_measurements_say_so() -> None:
    found = checks(Tables(), {})
    assert all(c.ok is None for c in found)
    assert "not measured" in "\n".join(checks_table(found))


def test_tables_render_markdown_with_a_row_per_target() -> None:
    rows = [_row("json/passthrough", t, [2.0], [1.0]) for t in ("direct", "gateway")]
    for render in (latency_table, stream_table, saturation_table):
        lines = render(rows)
        assert lines[0].startswith("| scenario | conc | target |")
        assert lines[1].startswith("|---|")
        assert len(lines) == 4
        assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| - |" in latency_table(rows)[2]  # no delta for the baseline itself
    assert "+1.000" in latency_table(rows)[3]


def test_machine_description() -> None:
    info = machine(Pinning("1", "0"), (0.5, 0.7), (10.0, 11.0))
    assert info["nproc"] and info["cpu"]
    assert "CPU 1" in info["pinning"]
    assert machine(None, (0, 0), (1, 1))["pinning"] == "off"
    assert 0 < calibrate() < 10_000
