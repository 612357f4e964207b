"""MemoryKV's byte bound: the accounting matches what Python allocates, eviction is oldest
first and counted, the rate windows and totals are bounded too, and the record queue is
bounded in bytes."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from gateway.kv import ENTRY_OVERHEAD, MemoryKV, exact
from gateway.metrics import StoreCollector
from gateway.records import JSONLFile, RecordLog
from tests.fakes.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000_000.0)


def summary(i: int) -> bytes:
    return orjson.dumps({"route": "auto", "model": "small", "tenant": "default", "p": i / 7})


def test_exact_copies_into_a_buffer_of_its_own_length() -> None:
    # orjson's bytes sit in a 4 KB buffer whatever their length: what the summaries cost
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [orjson.dumps({"a": i}) for i in range(200)]
        raw = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
        before = tracemalloc.get_traced_memory()[0]
        copies = [exact(b) for b in kept]
        copied = (tracemalloc.get_traced_memory()[0] - before) / len(copies)
    finally:
        tracemalloc.stop()
    assert copies == kept
    assert copied < 100 < 1000 < raw


@pytest.mark.anyio
async def test_byte_accounting_matches_what_python_allocates(clock: FakeClock) -> None:
    n = 20_000
    ids = [f"req_{i:024x}" for i in range(n)]  # the gateway's request id shape
    values = [summary(i) for i in range(n)]
    gc.collect()
    tracemalloc.start()
    try:
        kv = MemoryKV(max_bytes=1 << 30, clock=clock)
        before = tracemalloc.get_traced_memory()[0]
        for rid, value in zip(ids, values, strict=True):
            kv.put_later("req:" + rid, value, 3600)  # the key is built per put, as the gateway's
        measured = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    expected = sum(
        len("req:" + rid) + len(exact(v)) + ENTRY_OVERHEAD
        for rid, v in zip(ids, values, strict=True)
    )
    assert kv.used_bytes == expected
    # the estimate is within 15% of what the entries really took (map, tuples, copies)
    assert 0.85 < kv.used_bytes / measured < 1.15, (kv.used_bytes / n, measured / n)
    stats = kv.store_stats()[0]
    assert (stats.name, stats.entries, stats.bytes, stats.evicted) == ("kv", n, expected, 0)


@pytest.mark.anyio
async def test_replace_expire_and_close_keep_the_count_right(clock: FakeClock) -> None:
    kv = MemoryKV(clock=clock)
    await kv.put("a", b"12345", 10)
    assert kv.used_bytes == 1 + 5 + ENTRY_OVERHEAD
    await kv.put("a", b"1", 10)  # replaced
    assert kv.used_bytes == 1 + 1 + ENTRY_OVERHEAD
    assert await kv.put_if_absent("b", b"22", 10)
    assert not await kv.put_if_absent("b", b"33", 10)
    assert kv.used_bytes == 2 * ENTRY_OVERHEAD + 1 + 1 + 1 + 2
    clock.now += 11
    assert await kv.get("a") is None  # expired: forgotten
    assert kv.used_bytes == 1 + 2 + ENTRY_OVERHEAD
    await kv.put("c", b"3", 10)  # expired entries at the old end go on the next write
    assert kv.used_bytes == 1 + 1 + ENTRY_OVERHEAD
    await kv.aclose()
    assert kv.used_bytes == 0


@pytest.mark.anyio
async def test_the_byte_bound_evicts_oldest_first_and_counts(clock: FakeClock) -> None:
    entry = 8 + 100 + ENTRY_OVERHEAD  # an 8-character key, a 100-byte value
    kv = MemoryKV(max_bytes=10 * entry, clock=clock)
    for i in range(25):
        kv.put_later(f"key:{i:04d}", bytes(100), 3600)
        assert kv.used_bytes <= 10 * entry
    # the windows' and totals' share (an eighth each) is free, so values may use it all
    assert kv.used_bytes == 10 * entry
    assert [await kv.get(f"key:{i:04d}") is not None for i in (14, 15, 24)] == [False, True, True]
    await kv.get("key:0015")  # a read does not refresh; a write does
    kv.put_later("key:0015", bytes(100), 3600)
    kv.put_later("key:0099", bytes(100), 3600)
    assert await kv.get("key:0016") is None and await kv.get("key:0015") is not None
    assert kv.store_stats()[0].evicted == 16


@pytest.mark.anyio
async def test_rate_windows_and_totals_are_bounded(clock: FakeClock) -> None:
    kv = MemoryKV(max_bytes=8 * 100 * (10 + ENTRY_OVERHEAD), clock=clock)
    for i in range(1000):
        await kv.hit(f"tenant:{i:03d}", 60)  # 10-character keys
        await kv.add(f"budget:{i:03d}", 1.0, 3600)
    assert len(kv._windows) == 100 and len(kv._totals) <= 101
    assert await kv.hit("tenant:999", 60) == 2  # the newest are kept
    assert await kv.add("budget:999", 1.0, 3600) == 2.0
    stats = kv.store_stats()[0]
    assert stats.evicted >= 1800 and stats.bytes <= stats.max_bytes // 4 + 1000


@pytest.mark.anyio
async def test_the_store_collector_exports_bytes_bound_and_evictions(clock: FakeClock) -> None:
    kv = MemoryKV(max_bytes=2 * (1 + 1 + ENTRY_OVERHEAD), clock=clock)
    for key in "abc":
        await kv.put(key, b"v", 60)
    registry = CollectorRegistry()
    registry.register(StoreCollector(kv.store_stats))

    def sample(name: str) -> float | None:
        return registry.get_sample_value(name, {"store": "kv"})

    assert sample("effgate_store_bytes") == 2 * (2 + ENTRY_OVERHEAD)
    assert sample("effgate_store_max_bytes") == 2 * (2 + ENTRY_OVERHEAD)
    assert sample("effgate_store_entries") == 2
    assert sample("effgate_store_evictions_total") == 1
    assert sample("effgate_store_dropped_total") == 0


@pytest.mark.anyio
async def test_the_record_queue_is_bounded_in_bytes(tmp_path: Path) -> None:
    drops: list[str] = []
    log = RecordLog(
        file=JSONLFile(tmp_path, max_bytes=1 << 20, backups=1),
        buffer=1000,
        buffer_bytes=10_000,
        on_drop=drops.append,
    )
    for i in range(10):  # the writer is not running: 4 of 2,500 bytes fit in 10,000
        log.emit({"n": i}, size=2500)
    (stats,) = log.store_stats()
    assert (stats.name, stats.entries, stats.bytes, stats.dropped) == (
        "records_queue",
        4,
        10_000,
        6,
    )
    assert drops == ["buffer"] * 6
    log.start()
    await log.aclose()
    written = (tmp_path / "records.jsonl").read_bytes().split()
    assert [orjson.loads(line)["n"] for line in written] == [0, 1, 2, 3]
    assert log.store_stats()[0].bytes == 0
