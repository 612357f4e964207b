"""The issue's targets, judged against one run, and a description of the machine it ran on."""

from __future__ import annotations

import os
import platform
import timeit
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.procs import Pinning
from benchmarks.report import Check, Row, Tables

LIMITS = {
    "added_p50_ms": 0.5,
    "added_p99_ms": 1.5,
    "routed_over_passthrough_p50_ms": 0.25,
    "added_ttft_p50_ms": 0.7,
    "saturation_json_rps": 2000.0,
    "saturation_stream_rps": 1200.0,
    "throughput_vs_litellm": 25.0,
    "idle_rss_mb": 150.0,
    "start_s": 2.0,
}


def _find(rows: Sequence[Row], scenario: str, target: str, conc: int | None = None) -> Row | None:
    for r in rows:
        if r.scenario == scenario and r.target == target and conc in (None, r.concurrency):
            return r
    return None


def _at_most(name: str, limit: float, value: float | None, unit: str, note: str = "") -> Check:
    ok = None if value is None else value <= limit
    return Check(name, f"<= {limit:g} {unit}", value, unit, ok, note)


def _at_least(name: str, limit: float, value: float | None, unit: str, note: str = "") -> Check:
    ok = None if value is None else value >= limit
    return Check(name, f">= {limit:g} {unit}", value, unit, ok, note)


def checks(tables: Tables, process: Mapping[str, Mapping[str, float]]) -> list[Check]:
    """Issue 9's targets: added latency and TTFT at concurrency 1, routing's own cost, and
    saturation throughput of the gateway on one core, against LiteLLM's on the same core."""
    out: list[Check] = []
    passthrough = _find(tables.latency, "json/passthrough", "gateway", 1)
    routed = _find(tables.latency, "json/routed", "gateway", 1)
    out.append(
        _at_most(
            "added latency p50, JSON passthrough, c=1",
            LIMITS["added_p50_ms"],
            None if passthrough is None else passthrough.added_p50_ms,
            "ms",
        )
    )
    out.append(
        _at_most(
            "added latency p99, JSON passthrough, c=1",
            LIMITS["added_p99_ms"],
            None if passthrough is None else passthrough.added_p99_ms,
            "ms",
        )
    )
    over = (
        routed.stats.p50_ms - passthrough.stats.p50_ms
        if routed is not None and passthrough is not None
        else None
    )
    out.append(
        _at_most(
            "routed (estimator + decide) over passthrough, p50, c=1",
            LIMITS["routed_over_passthrough_p50_ms"],
            over,
            "ms",
        )
    )
    row = _find(tables.stream, "stream/passthrough", "gateway", 1)
    out.append(
        _at_most(
            "added TTFT p50, stream passthrough, c=1",
            LIMITS["added_ttft_p50_ms"],
            None if row is None else row.added_first_p50_ms,
            "ms",
        )
    )
    for kind, unit in (("json", "req/s"), ("stream", "streams/s")):
        gw = _find(tables.saturation, f"{kind}/passthrough", "gateway")
        out.append(
            _at_least(
                f"saturation throughput, {kind} passthrough, gateway on one core",
                LIMITS[f"saturation_{kind}_rps"],
                None if gw is None else gw.stats.rps,
                unit,
            )
        )
    gw = _find(tables.saturation, "json/passthrough", "gateway")
    peer = _find(tables.saturation, "json/passthrough", "litellm")
    ratio = gw.stats.rps / peer.stats.rps if gw and peer and peer.stats.rps > 0 else None
    floor = LIMITS["throughput_vs_litellm"]
    out.append(
        Check(
            "saturation throughput vs LiteLLM proxy (same core)",
            f">= {floor:g}x",
            ratio,
            "x",
            None if ratio is None else ratio >= floor,
            "" if ratio is not None else "run with --peer litellm",
        )
    )
    gateway = process.get("gateway", {})
    out.append(_at_most("idle RSS", LIMITS["idle_rss_mb"], gateway.get("idle_rss_mb"), "MB"))
    out.append(
        _at_most(
            "start to first served request",
            LIMITS["start_s"],
            gateway.get("start_to_first_served_s"),
            "s",
        )
    )
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def calibrate() -> float:
    """Microseconds for ``sum(range(1000))``, best of 5: how fast Python runs here, right now.

    On a shared or throttled machine every number in the report scales with this one.
    """
    timer = timeit.Timer("sum(range(1000))")
    loops = 2000
    return min(timer.repeat(repeat=5, number=loops)) / loops * 1e6


def machine(
    pin: Pinning | None,
    load: tuple[float, float],
    speed_us: tuple[float, float],
) -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pinning": "off"
        if pin is None
        else f"gateway/peer on CPU {pin.server}, fakes and load generator on CPU {pin.client}",
        "load average before/after (1 min)": f"{load[0]:.2f} / {load[1]:.2f}",
        "python speed before/after (sum(range(1000)), best of 5)": (
            f"{speed_us[0]:.1f} us / {speed_us[1]:.1f} us"
        ),
    }
