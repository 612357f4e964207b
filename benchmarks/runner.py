"""Interleaved measurement: every target takes its turn in every round (A/B/A/B).

A round runs each target for its share of the requests (or seconds) one after the other,
reversing the order every other round, so that slow drift and bursts of outside load land on
all targets alike. Each target first gets a discarded warm-up (connections, caches, JIT-free
Python still warms its allocator and the gateway's lazy paths).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from benchmarks.loadgen import Sample, build_request, run
from benchmarks.procs import session_cpu_s
from benchmarks.report import Row, Stats
from benchmarks.scenarios import Scenario, Target

HOST = "127.0.0.1"
PATH = "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class Endpoint:
    port: int
    request: bytes  # pre-built HTTP request bytes for one scenario
    pid: int | None = None  # the server's session leader, to read its CPU time


@dataclass(frozen=True, slots=True)
class Budget:
    """Per target, over all rounds: a request count, or seconds (saturation runs)."""

    requests: int | None = None
    duration_s: float | None = None
    rounds: int = 3
    warmup: int = 50


def _share(total: int, rounds: int, r: int) -> int:
    return total // rounds + (1 if r < total % rounds else 0)


async def interleaved(
    endpoints: Mapping[Target, Endpoint], concurrency: int, budget: Budget
) -> dict[Target, list[Sample]]:
    order = list(endpoints)
    samples: dict[Target, list[Sample]] = {t: [] for t in order}
    for t in order:
        ep = endpoints[t]
        await run(
            HOST,
            ep.port,
            ep.request,
            concurrency=concurrency,
            requests=max(budget.warmup, concurrency),
        )
    for r in range(budget.rounds):
        for t in order if r % 2 == 0 else reversed(order):
            ep = endpoints[t]
            n = _share(budget.requests, budget.rounds, r) if budget.requests is not None else None
            secs = budget.duration_s / budget.rounds if budget.duration_s is not None else None
            if n is not None and n == 0:
                continue
            cpu0 = session_cpu_s(ep.pid) if ep.pid is not None else math.nan
            sample = await run(
                HOST, ep.port, ep.request, concurrency=concurrency, requests=n, duration_s=secs
            )
            if ep.pid is not None:
                sample = dataclasses.replace(sample, server_cpu_s=session_cpu_s(ep.pid) - cpu0)
            samples[t].append(sample)
    return samples


def rows(scenario: Scenario, concurrency: int, samples: Mapping[Target, list[Sample]]) -> list[Row]:
    """One row per target, each next to the direct baseline measured in the same rounds."""
    direct = Stats.of(samples["direct"])
    return [Row(scenario.name, concurrency, t, Stats.of(s), direct) for t, s in samples.items()]


async def measure(
    scenario: Scenario,
    servers: Mapping[Target, tuple[int, int | None]],
    concurrency: int,
    budget: Budget,
    api_key: str,
) -> list[Row]:
    """Run ``scenario`` on every target that can serve it; ``servers`` maps to (port, pid)."""
    endpoints = {
        t: Endpoint(port, build_request(HOST, port, PATH, scenario.body(t), api_key), pid)
        for t, (port, pid) in servers.items()
        if scenario.model(t) is not None
    }
    samples = await interleaved(endpoints, concurrency, budget)
    out = rows(scenario, concurrency, samples)
    for row in out:
        s = row.stats
        print(
            f"  {scenario.name:<18} c={concurrency:<3} {row.target:<8} n={s.count:<6} "
            f"err={s.errors:<3} p50={s.p50_ms:7.3f} ms p99={s.p99_ms:7.3f} ms "
            f"first p50={s.first_p50_ms:7.3f} ms {s.rps:8.0f} req/s cpu {s.cpu_ms:.3f} ms/req",
            file=sys.stderr,
        )
    return out
