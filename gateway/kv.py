"""Shared state behind one small interface: in-process memory, or Redis when configured.

Holds what must outlive a request but not the process: request summaries that feedback joins
(with a TTL), feedback verdicts, and per-tenant rate windows. With Redis, several replicas
share it. If Redis goes away, requests keep flowing: writes are held in a pending buffer and
replayed to Redis when it is back, reads and counters fall back to the in-process store
(logged and counted), so limits become per replica and feedback joins only what this replica
served, until Redis is back. Every store and buffer here is bounded in bytes and exports what
it holds, evicts, buffers, replays and drops (``StoreStats``, docs/operations.md "Memory").
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("effgate.kv")

FLUSH_BATCH = 256  # writes per Redis pipeline


class KVUnavailable(Exception):
    """A strict read could not ask the shared store, and this process holds no value."""


class KV(Protocol):
    async def put(self, key: str, value: bytes, ttl_s: int) -> None: ...

    def put_later(self, key: str, value: bytes, ttl_s: int) -> None:
        """Store now as far as this process's reads go; persist off the caller's path."""
        ...

    async def get(self, key: str, *, strict: bool = False) -> bytes | None:
        """The value, or None when absent. ``strict``: raise ``KVUnavailable`` instead of
        answering None when the shared store failed and this process holds nothing (so an
        unknown key and an unreachable store read differently)."""
        ...

    async def put_if_absent(self, key: str, value: bytes, ttl_s: int) -> bool:
        """Store ``value`` only if ``key`` holds nothing; True when this call stored it."""
        ...

    async def hit(self, key: str, window_s: int) -> int: ...

    async def add(self, key: str, amount: float, ttl_s: int) -> float:
        """Add ``amount`` to a float counter (created at 0 with ``ttl_s``); the new total."""
        ...

    async def aclose(self) -> None: ...


# Bytes an entry costs beside its key and value: the map's slot and order node, the tuple,
# the expiry float, the object headers (measured with tracemalloc on CPython 3.11; checked by
# tests/gateway/test_kv_memory.py)
ENTRY_OVERHEAD = 240
LOG_EVERY_S = 10.0


def exact(value: bytes) -> bytes:
    """``value`` in an allocation of its own length. orjson's ``dumps`` returns bytes backed
    by a 4 KB buffer whatever their length: kept as they come, 100 bytes of summary cost 4 KB."""
    return bytes(memoryview(value))


@dataclass(slots=True)
class StoreStats:
    """What one bounded store holds and has done, exported on scrape (StoreCollector)."""

    name: str
    max_bytes: int
    bytes: int = 0
    entries: int = 0
    evicted: int = 0  # pushed out by the bound, oldest first (in-process stores)
    buffered: int = 0  # writes held because Redis failed (pending buffers)
    replayed: int = 0  # held writes that reached Redis later
    dropped: int = 0  # writes lost because the buffer was full (pending buffers, queues)


class MemoryKV:
    """A TTL map bounded in bytes (key + value + ``ENTRY_OVERHEAD`` each); oldest evicted first.

    The rate windows and float totals live beside it, each bounded to an eighth of
    ``max_bytes``; the values take what they leave. ``max_items`` optionally caps the values'
    count as well.
    """

    def __init__(
        self,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        max_items: int | None = None,
        clock: Callable[[], float] = time.time,
        name: str = "kv",
    ) -> None:
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._windows: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._totals: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._max_items = max_items
        self._side_max = max_bytes // 8
        self._data_bytes = self._windows_bytes = self._totals_bytes = 0
        self._clock = clock
        self.stats = StoreStats(name, max_bytes)

    def store_stats(self) -> list[StoreStats]:
        s = self.stats
        s.bytes = self._data_bytes + self._windows_bytes + self._totals_bytes
        s.entries = len(self._data) + len(self._windows) + len(self._totals)
        return [s]

    @property
    def used_bytes(self) -> int:
        """Bytes held now: keys, values and the per-entry overhead, windows and totals too."""
        return self._data_bytes + self._windows_bytes + self._totals_bytes

    async def put(self, key: str, value: bytes, ttl_s: int) -> None:
        self.put_later(key, value, ttl_s)

    def put_later(self, key: str, value: bytes, ttl_s: int) -> None:
        now = self._clock()
        old = self._data.pop(key, None)
        if old is not None:
            self._data_bytes -= len(key) + len(old[1]) + ENTRY_OVERHEAD
        value = exact(value)
        self._data[key] = (now + ttl_s, value)
        self._data_bytes += len(key) + len(value) + ENTRY_OVERHEAD
        self._trim(now)

    def _trim(self, now: float) -> None:
        data = self._data
        # expired entries at the old end go first (a few per write: O(1) per call)
        for _ in range(4):
            if not data:
                break
            key, (expires, value) = next(iter(data.items()))
            if expires > now:
                break
            del data[key]
            self._data_bytes -= len(key) + len(value) + ENTRY_OVERHEAD
        limit = self.stats.max_bytes - self._windows_bytes - self._totals_bytes
        cap = self._max_items
        while data and (self._data_bytes > limit or (cap is not None and len(data) > cap)):
            key, (_, value) = data.popitem(last=False)
            self._data_bytes -= len(key) + len(value) + ENTRY_OVERHEAD
            self.stats.evicted += 1

    def _forget(self, key: str) -> None:
        item = self._data.pop(key, None)
        if item is not None:
            self._data_bytes -= len(key) + len(item[1]) + ENTRY_OVERHEAD

    async def get(self, key: str, *, strict: bool = False) -> bytes | None:
        return self.get_now(key)  # this process is the whole store: never unavailable

    def get_now(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[0] <= self._clock():
            self._forget(key)
            return None
        return item[1]

    async def put_if_absent(self, key: str, value: bytes, ttl_s: int) -> bool:
        # no await between the check and the write: atomic on the event loop
        if self.get_now(key) is not None:
            return False
        self.put_later(key, value, ttl_s)
        return True

    async def hit(self, key: str, window_s: int) -> int:
        """Count one hit in the current fixed window; returns the count so far."""
        window = int(self._clock() // window_s)
        old = self._windows.pop(key, None)
        if old is None:
            self._windows_bytes += len(key) + ENTRY_OVERHEAD
        n = old[1] + 1 if old is not None and old[0] == window else 1
        self._windows[key] = (window, n)
        while self._windows_bytes > self._side_max and len(self._windows) > 1:
            gone, _ = self._windows.popitem(last=False)
            self._windows_bytes -= len(gone) + ENTRY_OVERHEAD
            self.stats.evicted += 1
        return n

    async def add(self, key: str, amount: float, ttl_s: int) -> float:
        now = self._clock()
        old = self._totals.pop(key, None)
        if old is None:
            self._totals_bytes += len(key) + ENTRY_OVERHEAD
        expires, total = old if old is not None else (now + ttl_s, 0.0)
        if expires <= now:
            expires, total = now + ttl_s, 0.0
        total += amount
        self._totals[key] = (expires, total)
        # a few keys per route and day; bounded all the same
        while len(self._totals) > 1 and (
            self._totals_bytes > self._side_max or len(self._totals) > 4096
        ):
            gone, _ = self._totals.popitem(last=False)
            self._totals_bytes -= len(gone) + ENTRY_OVERHEAD
            self.stats.evicted += 1
        return total

    async def aclose(self) -> None:
        self._data.clear()
        self._windows.clear()
        self._totals.clear()
        self._data_bytes = self._windows_bytes = self._totals_bytes = 0


@dataclass(slots=True)
class _Write:
    """A write Redis has not taken yet: kept until it does, replayed after a failure."""

    value: bytes
    expires: float  # wall clock: the TTL left is recomputed when it is replayed
    nx: bool = False  # a put_if_absent: replayed with SET NX, so a verdict stored meanwhile wins
    failed: bool = False  # a write to Redis failed with it in it (counted as buffered once)


class RedisKV:
    """Redis-backed store; while Redis is unreachable or slow, writes wait and reads fall back.

    Writes (``put_later``, and ``put`` / ``put_if_absent`` that Redis failed) go to a pending
    buffer bounded in bytes, visible to this process's reads at once and written to Redis by
    one background task; when a write fails the task retries with a backoff
    (``retry_s`` doubling to ``retry_max_s``) and replays everything held, in order, when
    Redis answers again. Past the bound the oldest held writes are dropped from the replay
    (moved to the local store, so this replica still finds them; counted and logged once per
    interval). Every Redis call is bounded by ``timeout_s`` (``asyncio.timeout`` around it, on
    top of the socket timeouts). Reads, rate windows and totals use the local store (bounded,
    ``local_max_bytes``) when Redis fails, as before.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 0.25,
        prefix: str = "effgate:",
        on_fallback: Callable[[str], None] | None = None,
        local_max_bytes: int = 64 * 1024 * 1024,
        pending_max_bytes: int = 32 * 1024 * 1024,
        retry_s: float = 0.1,
        retry_max_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        import redis.asyncio as redis

        from gateway.redis_client import connect

        self._redis: Any = connect(url, timeout_s)  # one node, Sentinel or Cluster
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError, TimeoutError)
        self._timeout_s = timeout_s
        self._prefix = prefix
        self._clock = clock
        self._fallback = MemoryKV(max_bytes=local_max_bytes, clock=clock, name="kv_local")
        self._on_fallback = on_fallback
        self._last_log = 0.0
        # written by put_later, visible to get at once, flushed to Redis by one task
        self._pending: OrderedDict[str, _Write] = OrderedDict()
        self._pending_bytes = 0
        self.pending = StoreStats("kv_pending", pending_max_bytes)
        self._unlogged_drops = 0
        self._drops_logged_at = -LOG_EVERY_S
        self._retry_s, self._retry_max_s = retry_s, retry_max_s
        self._flusher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closing = False
        self._down = False  # the last write to Redis failed

    def store_stats(self) -> list[StoreStats]:
        p = self.pending
        p.bytes, p.entries = self._pending_bytes, len(self._pending)
        return [p, *self._fallback.store_stats()]

    def _failed(self, op: str, exc: BaseException) -> None:
        if self._on_fallback is not None:
            self._on_fallback(op)
        now = time.monotonic()
        if now - self._last_log > LOG_EVERY_S:
            self._last_log = now
            log.warning("redis %s failed (%s); using the in-process store", op, type(exc).__name__)

    # -- the pending buffer ---------------------------------------------------------------------

    def _hold(self, key: str, value: bytes, ttl_s: int, *, nx: bool, failed: bool) -> None:
        failed = failed or self._down  # Redis is failing: this write waits for the retry
        old = self._pending.pop(key, None)
        if old is not None:
            self._pending_bytes -= len(key) + len(old.value) + ENTRY_OVERHEAD
            failed = failed or old.failed  # counted as buffered already: replayed later
        elif failed:
            self.pending.buffered += 1
        w = _Write(exact(value), self._clock() + ttl_s, nx=nx, failed=failed)
        self._pending[key] = w
        self._pending_bytes += len(key) + len(w.value) + ENTRY_OVERHEAD
        dropped = 0
        while self._pending_bytes > self.pending.max_bytes and self._pending:
            gone, g = self._pending.popitem(last=False)
            self._pending_bytes -= len(gone) + len(g.value) + ENTRY_OVERHEAD
            left = g.expires - self._clock()
            if left > 0:  # not replayed to Redis, but this replica still finds it
                self._fallback.put_later(gone, g.value, max(1, int(left)))
            dropped += 1
        if dropped:
            self._dropped(dropped)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())

    def _dropped(self, n: int) -> None:
        self.pending.dropped += n
        self._unlogged_drops += n
        now = time.monotonic()
        if now - self._drops_logged_at >= LOG_EVERY_S:
            log.error(
                "redis unreachable: dropped %d held write(s) since the last report (the "
                "pending buffer is full at %d bytes); they stay in this replica's store only",
                self._unlogged_drops,
                self.pending.max_bytes,
            )
            self._drops_logged_at, self._unlogged_drops = now, 0

    async def _flush(self) -> None:
        delay = self._retry_s
        while self._pending:
            batch = list(itertools.islice(self._pending.items(), FLUSH_BATCH))
            now = self._clock()
            live = [(key, w) for key, w in batch if w.expires > now]  # expired: nothing to write
            try:
                if live:
                    async with asyncio.timeout(self._timeout_s):
                        async with self._redis.pipeline(transaction=False) as pipe:
                            for key, w in live:
                                ttl = max(1, round(w.expires - now))
                                pipe.set(self._prefix + key, w.value, ex=ttl, nx=w.nx)
                            await pipe.execute()
            except self._errors as exc:
                self._failed("put", exc)
                if not self._down:  # Redis just failed: all that waits is held for the replay
                    self._down = True
                    for w in self._pending.values():
                        if not w.failed:
                            w.failed = True
                            self.pending.buffered += 1
                if self._closing:
                    self._lost_at_close()
                    return
                # the backoff: one task retries, however many writes wait
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                delay = min(delay * 2, self._retry_max_s)
                continue
            delay, self._down = self._retry_s, False
            for key, w in batch:
                if self._pending.get(key) is w:  # not replaced meanwhile
                    del self._pending[key]
                    self._pending_bytes -= len(key) + len(w.value) + ENTRY_OVERHEAD
                    if w.failed:
                        self.pending.replayed += 1

    def _lost_at_close(self) -> None:
        n = len(self._pending)
        if n:
            self.pending.dropped += n
            log.error("redis unreachable at shutdown: %d held write(s) not written", n)
        self._pending.clear()
        self._pending_bytes = 0

    # -- the KV operations ------------------------------------------------------------------------

    async def put(self, key: str, value: bytes, ttl_s: int) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._redis.set(self._prefix + key, value, ex=ttl_s)
        except self._errors as exc:
            self._failed("put", exc)
            self._hold(key, value, ttl_s, nx=False, failed=True)
            return
        old = self._pending.pop(key, None)  # superseded: the flusher must not write it after
        if old is not None:
            self._pending_bytes -= len(key) + len(old.value) + ENTRY_OVERHEAD

    def put_later(self, key: str, value: bytes, ttl_s: int) -> None:
        self._hold(key, value, ttl_s, nx=False, failed=False)

    async def get(self, key: str, *, strict: bool = False) -> bytes | None:
        pending = self._pending.get(key)
        if pending is not None:
            return pending.value
        try:
            async with asyncio.timeout(self._timeout_s):
                value: bytes | None = await self._redis.get(self._prefix + key)
        except self._errors as exc:
            self._failed("get", exc)
            local = await self._fallback.get(key)
            if local is None and strict:
                raise KVUnavailable(key) from exc
            return local
        return value if value is not None else await self._fallback.get(key)

    async def put_if_absent(self, key: str, value: bytes, ttl_s: int) -> bool:
        if key in self._pending:
            return False  # held here, not in Redis yet
        try:
            async with asyncio.timeout(self._timeout_s):
                stored = await self._redis.set(self._prefix + key, value, ex=ttl_s, nx=True)
        except self._errors as exc:
            self._failed("put", exc)
            if key in self._pending or self._fallback.get_now(key) is not None:
                return False
            # replayed with NX: a value another replica stored meanwhile is kept
            self._hold(key, value, ttl_s, nx=True, failed=True)
            return True
        return bool(stored)

    async def hit(self, key: str, window_s: int) -> int:
        window = int(time.time() // window_s)
        rkey = f"{self._prefix}rate:{key}:{window}"
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.incr(rkey)
                    pipe.expire(rkey, window_s * 2)
                    count, _ = await pipe.execute()
            return int(count)
        except self._errors as exc:
            self._failed("hit", exc)
            return await self._fallback.hit(key, window_s)

    async def add(self, key: str, amount: float, ttl_s: int) -> float:
        rkey = f"{self._prefix}sum:{key}"
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.incrbyfloat(rkey, amount)
                    pipe.expire(rkey, ttl_s, nx=True)
                    total, _ = await pipe.execute()
            return float(total)
        except self._errors as exc:
            self._failed("add", exc)
            return await self._fallback.add(key, amount, ttl_s)

    @property
    def client(self) -> Any:
        """The ``redis.asyncio`` client (the record log writes its stream through it)."""
        return self._redis

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout_s):
                return bool(await self._redis.ping())
        except self._errors:
            return False

    async def aclose(self) -> None:
        """Write what is held (one more try at once if Redis is failing), then close."""
        self._closing = True
        self._wake.set()
        if self._flusher is not None:
            await self._flusher
        await self._redis.aclose()
