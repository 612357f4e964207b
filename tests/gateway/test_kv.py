"""MemoryKV: TTLs, fixed rate windows and the size bound, on an injected clock."""

from __future__ import annotations

import pytest

from gateway.kv import KV, MemoryKV
from tests.fakes.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000_000.0)


@pytest.fixture
def kv(clock: FakeClock) -> MemoryKV:
    return MemoryKV(clock=clock)


def test_memory_kv_is_a_kv(kv: MemoryKV) -> None:
    store: KV = kv
    assert store is kv


@pytest.mark.anyio
async def test_values_expire_after_their_ttl(kv: MemoryKV, clock: FakeClock) -> None:
    await kv.put("a", b"1", 10)
    assert await kv.get("a") == b"1"
    clock.now += 9.99
    assert await kv.get("a") == b"1"
    clock.now += 0.01
    assert await kv.get("a") is None
    assert await kv.get("never") is None


@pytest.mark.anyio
async def test_put_replaces_value_and_ttl(kv: MemoryKV, clock: FakeClock) -> None:
    await kv.put("a", b"1", 10)
    clock.now += 8
    await kv.put("a", b"2", 10)
    clock.now += 8
    assert await kv.get("a") == b"2"


@pytest.mark.anyio
async def test_hits_count_within_a_fixed_window(kv: MemoryKV, clock: FakeClock) -> None:
    clock.now = 60 * 1000  # the start of a window
    assert [await kv.hit("t", 60) for _ in range(3)] == [1, 2, 3]
    assert await kv.hit("other", 60) == 1
    clock.now += 59.9
    assert await kv.hit("t", 60) == 4
    clock.now += 0.1  # next window
    assert await kv.hit("t", 60) == 1


@pytest.mark.anyio
async def test_oldest_entries_are_evicted_past_the_bound(clock: FakeClock) -> None:
    kv = MemoryKV(max_items=2, clock=clock)
    await kv.put("a", b"1", 100)
    await kv.put("b", b"2", 100)
    await kv.put("a", b"1bis", 100)  # refreshed: now the newest
    await kv.put("c", b"3", 100)
    assert await kv.get("b") is None
    assert await kv.get("a") == b"1bis" and await kv.get("c") == b"3"


@pytest.mark.anyio
async def test_aclose_forgets_everything(kv: MemoryKV) -> None:
    await kv.put("a", b"1", 100)
    await kv.aclose()
    assert await kv.get("a") is None
