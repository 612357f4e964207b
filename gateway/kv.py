"""Shared state behind one small interface: in-process memory, or Redis when configured.

Holds what must outlive a request but not the process: request summaries that feedback joins
(with a TTL), feedback verdicts, and per-tenant rate windows. With Redis, several replicas
share it. If Redis goes away, every operation falls back to the in-process store (logged and
counted) so requests keep flowing: limits become per replica and feedback joins only what this
replica served, until Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("effgate.kv")


class KV(Protocol):
    async def put(self, key: str, value: bytes, ttl_s: int) -> None: ...

    def put_later(self, key: str, value: bytes, ttl_s: int) -> None:
        """Store now as far as this process's reads go; persist off the caller's path."""
        ...

    async def get(self, key: str) -> bytes | None: ...

    async def put_if_absent(self, key: str, value: bytes, ttl_s: int) -> bool:
        """Store ``value`` only if ``key`` holds nothing; True when this call stored it."""
        ...

    async def hit(self, key: str, window_s: int) -> int: ...

    async def add(self, key: str, amount: float, ttl_s: int) -> float:
        """Add ``amount`` to a float counter (created at 0 with ``ttl_s``); the new total."""
        ...

    async def aclose(self) -> None: ...


class MemoryKV:
    """A TTL map bounded in size (oldest entries are evicted first)."""

    def __init__(
        self, *, max_items: int = 1_000_000, clock: Callable[[], float] = time.time
    ) -> None:
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._windows: dict[str, tuple[int, int]] = {}
        self._totals: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._max = max_items
        self._clock = clock

    async def put(self, key: str, value: bytes, ttl_s: int) -> None:
        self.put_later(key, value, ttl_s)

    def put_later(self, key: str, value: bytes, ttl_s: int) -> None:
        self._data[key] = (self._clock() + ttl_s, value)
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    async def get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[0] <= self._clock():
            del self._data[key]
            return None
        return item[1]

    async def put_if_absent(self, key: str, value: bytes, ttl_s: int) -> bool:
        # no await between the check and the write: atomic on the event loop
        if await self.get(key) is not None:
            return False
        self.put_later(key, value, ttl_s)
        return True

    async def hit(self, key: str, window_s: int) -> int:
        """Count one hit in the current fixed window; returns the count so far."""
        window = int(self._clock() // window_s)
        w, n = self._windows.get(key, (window, 0))
        n = n + 1 if w == window else 1
        self._windows[key] = (window, n)
        return n

    async def add(self, key: str, amount: float, ttl_s: int) -> float:
        now = self._clock()
        expires, total = self._totals.get(key, (now + ttl_s, 0.0))
        if expires <= now:
            expires, total = now + ttl_s, 0.0
        total += amount
        self._totals[key] = (expires, total)
        self._totals.move_to_end(key)
        while len(self._totals) > 4096:  # a few keys per route and day; bounded all the same
            self._totals.popitem(last=False)
        return total

    async def aclose(self) -> None:
        self._data.clear()


class RedisKV:
    """Redis-backed store with a memory fallback when Redis is unreachable or slow."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 0.25,
        prefix: str = "effgate:",
        on_fallback: Callable[[str], None] | None = None,
    ) -> None:
        import redis.asyncio as redis

        from gateway.redis_client import connect

        self._redis: Any = connect(url, timeout_s)  # one node, Sentinel or Cluster
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError, TimeoutError)
        self._prefix = prefix
        self._fallback = MemoryKV()
        self._on_fallback = on_fallback
        self._last_log = 0.0
        # written by put_later, visible to get at once, flushed to Redis by one task
        self._pending: dict[str, tuple[bytes, int]] = {}
        self._flusher: asyncio.Task[None] | None = None

    def _failed(self, op: str, exc: BaseException) -> None:
        if self._on_fallback is not None:
            self._on_fallback(op)
        now = time.monotonic()
        if now - self._last_log > 10:
            self._last_log = now
            log.warning("redis %s failed (%s); using the in-process store", op, type(exc).__name__)

    async def put(self, key: str, value: bytes, ttl_s: int) -> None:
        try:
            await self._redis.set(self._prefix + key, value, ex=ttl_s)
        except self._errors as exc:
            self._failed("put", exc)
            await self._fallback.put(key, value, ttl_s)

    def put_later(self, key: str, value: bytes, ttl_s: int) -> None:
        self._pending[key] = (value, ttl_s)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, {}
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key, (value, ttl_s) in batch.items():
                        pipe.set(self._prefix + key, value, ex=ttl_s)
                    await pipe.execute()
            except self._errors as exc:
                self._failed("put", exc)
                for key, (value, ttl_s) in batch.items():
                    await self._fallback.put(key, value, ttl_s)

    async def get(self, key: str) -> bytes | None:
        pending = self._pending.get(key)
        if pending is not None:
            return pending[0]
        try:
            value: bytes | None = await self._redis.get(self._prefix + key)
        except self._errors as exc:
            self._failed("get", exc)
            return await self._fallback.get(key)
        return value if value is not None else await self._fallback.get(key)

    async def put_if_absent(self, key: str, value: bytes, ttl_s: int) -> bool:
        try:
            stored = await self._redis.set(self._prefix + key, value, ex=ttl_s, nx=True)
        except self._errors as exc:
            self._failed("put", exc)
            return await self._fallback.put_if_absent(key, value, ttl_s)
        return bool(stored)

    async def hit(self, key: str, window_s: int) -> int:
        window = int(time.time() // window_s)
        rkey = f"{self._prefix}rate:{key}:{window}"
        try:
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
            return bool(await self._redis.ping())
        except self._errors:
            return False

    async def aclose(self) -> None:
        if self._flusher is not None:
            await self._flusher
        await self._redis.aclose()
