"""Numbers and tables: percentiles, gateway-minus-direct deltas, markdown and JSON output.

Added latency is compared at matched percentiles (gateway p50 - direct p50, p99 - p99) over the
pooled samples of all interleaved rounds: both sides of a delta were measured in the same run,
taking turns, so load that comes and goes hits both.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from benchmarks.loadgen import Sample


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN when empty."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True)
class Stats:
    """Pooled rounds of one (scenario, concurrency, target); times in milliseconds."""

    count: int
    errors: int
    p50_ms: float
    p99_ms: float
    first_p50_ms: float
    first_p99_ms: float
    rps: float
    cpu_ms: float  # the server's CPU per completed request

    @classmethod
    def of(cls, samples: Iterable[Sample]) -> Stats:
        samples = list(samples)
        lat = [x for s in samples for x in s.latencies]
        first = [x for s in samples for x in s.firsts]
        elapsed = sum(s.elapsed_s for s in samples)
        cpu = sum(s.server_cpu_s for s in samples)
        return cls(
            count=len(lat),
            errors=sum(s.errors for s in samples),
            p50_ms=percentile(lat, 50) * 1000,
            p99_ms=percentile(lat, 99) * 1000,
            first_p50_ms=percentile(first, 50) * 1000,
            first_p99_ms=percentile(first, 99) * 1000,
            rps=len(lat) / elapsed if elapsed > 0 else 0.0,
            cpu_ms=cpu / len(lat) * 1000 if lat else math.nan,
        )


@dataclass(frozen=True, slots=True)
class Row:
    """One measured line: a target's stats next to the direct baseline of the same run."""

    scenario: str
    concurrency: int
    target: str
    stats: Stats
    direct: Stats

    @property
    def added_p50_ms(self) -> float:
        return self.stats.p50_ms - self.direct.p50_ms

    @property
    def added_p99_ms(self) -> float:
        return self.stats.p99_ms - self.direct.p99_ms

    @property
    def added_first_p50_ms(self) -> float:
        return self.stats.first_p50_ms - self.direct.first_p50_ms

    @property
    def added_first_p99_ms(self) -> float:
        return self.stats.first_p99_ms - self.direct.first_p99_ms

    def as_json(self) -> dict[str, object]:
        return {
            "scenario": self.scenario,
            "concurrency": self.concurrency,
            "target": self.target,
            "count": self.stats.count,
            "errors": self.stats.errors,
            "p50_ms": self.stats.p50_ms,
            "p99_ms": self.stats.p99_ms,
            "first_p50_ms": self.stats.first_p50_ms,
            "first_p99_ms": self.stats.first_p99_ms,
            "rps": self.stats.rps,
            "server_cpu_ms_per_request": self.stats.cpu_ms,
            "added_p50_ms": self.added_p50_ms,
            "added_p99_ms": self.added_p99_ms,
            "added_first_p50_ms": self.added_first_p50_ms,
            "added_first_p99_ms": self.added_first_p99_ms,
            "rps_ratio_to_direct": _ratio(self.stats.rps, self.direct.rps),
        }


@dataclass(frozen=True, slots=True)
class Check:
    """One target of the issue, met or not."""

    name: str
    limit: str
    measured: float | None
    unit: str
    ok: bool | None  # None: not measured in this run
    note: str = ""


@dataclass(slots=True)
class Tables:
    latency: list[Row] = field(default_factory=list)
    stream: list[Row] = field(default_factory=list)
    saturation: list[Row] = field(default_factory=list)


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def _f(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def _signed(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:+.3f}"


def _table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def latency_table(rows: Sequence[Row]) -> list[str]:
    head = (
        "scenario",
        "conc",
        "target",
        "n",
        "err",
        "p50 ms",
        "p99 ms",
        "added p50 ms",
        "added p99 ms",
        "p50 ratio",
        "req/s",
        "CPU ms/req",
    )
    return _table(
        head,
        (
            (
                r.scenario,
                str(r.concurrency),
                r.target,
                str(r.stats.count),
                str(r.stats.errors),
                _f(r.stats.p50_ms),
                _f(r.stats.p99_ms),
                "-" if r.target == "direct" else _signed(r.added_p50_ms),
                "-" if r.target == "direct" else _signed(r.added_p99_ms),
                _f(_ratio(r.stats.p50_ms, r.direct.p50_ms), 2),
                _f(r.stats.rps, 0),
                _f(r.stats.cpu_ms),
            )
            for r in rows
        ),
    )


def stream_table(rows: Sequence[Row]) -> list[str]:
    head = (
        "scenario",
        "conc",
        "target",
        "n",
        "err",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "added TTFT p50",
        "added TTFT p99",
        "total p50 ms",
        "total p99 ms",
        "streams/s",
        "CPU ms/stream",
    )
    return _table(
        head,
        (
            (
                r.scenario,
                str(r.concurrency),
                r.target,
                str(r.stats.count),
                str(r.stats.errors),
                _f(r.stats.first_p50_ms),
                _f(r.stats.first_p99_ms),
                "-" if r.target == "direct" else _signed(r.added_first_p50_ms),
                "-" if r.target == "direct" else _signed(r.added_first_p99_ms),
                _f(r.stats.p50_ms),
                _f(r.stats.p99_ms),
                _f(r.stats.rps, 0),
                _f(r.stats.cpu_ms),
            )
            for r in rows
        ),
    )


def saturation_table(rows: Sequence[Row]) -> list[str]:
    head = (
        "scenario",
        "conc",
        "target",
        "n",
        "err",
        "req/s",
        "vs direct",
        "p50 ms",
        "p99 ms",
        "CPU ms/req",
    )
    return _table(
        head,
        (
            (
                r.scenario,
                str(r.concurrency),
                r.target,
                str(r.stats.count),
                str(r.stats.errors),
                _f(r.stats.rps, 0),
                _f(_ratio(r.stats.rps, r.direct.rps), 2),
                _f(r.stats.p50_ms),
                _f(r.stats.p99_ms),
                _f(r.stats.cpu_ms),
            )
            for r in rows
        ),
    )


def checks_table(checks: Sequence[Check]) -> list[str]:
    def verdict(c: Check) -> str:
        return "not measured" if c.ok is None else ("met" if c.ok else "MISSED")

    return _table(
        ("target", "limit", "measured", "verdict", "note"),
        (
            (
                c.name,
                c.limit,
                "n/a" if c.measured is None else f"{_f(c.measured)} {c.unit}",
                verdict(c),
                c.note,
            )
            for c in checks
        ),
    )
