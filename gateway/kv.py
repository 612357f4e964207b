"""Shared state behind one small interface: in-process memory, or Redis when configured.

Holds what must outlive a request but not the process: request summaries that feedback joins
(with a TTL), feedback verdicts, and per-tenant rate windows. With Redis, several replicas
share it. If Redis goes away, every operation falls back to the in-process store (logged and
counted) so requests keep flowing: limits become per replica and feedback joins only what this
replica served, until Redis is back.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("effgate.kv")


class KV(Protocol):
    async def put(self, key: str, value: bytes, ttl_s: int) -> None: ...

    async def get(self, key: str) -> bytes | None: ...

    async def hit(self, key: str, window_s: int) -> int: ...

    async def aclose(self) -> None: ...


class MemoryKV:
    """A TTL map bounded in size (oldest entries are evicted first)."""

    def __init__(
        self, *, max_items: int = 1_000_000, clock: Callable[[], float] = time.time
    ) -> None:
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._windows: dict[str, tuple[int, int]] = {}
        self._max = max_items
        self._clock = clock

    async def put(self, key: str, value: bytes, ttl_s: int) -> None:
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

    async def hit(self, key: str, window_s: int) -> int:
        """Count one hit in the current fixed window; returns the count so far."""
        window = int(self._clock() // window_s)
        w, n = self._windows.get(key, (window, 0))
        n = n + 1 if w == window else 1
        self._windows[key] = (window, n)
        return n

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

        self._redis: Any = redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry_on_timeout=False
        )
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError, TimeoutError)
        self._prefix = prefix
        self._fallback = MemoryKV()
        self._on_fallback = on_fallback
        self._last_log = 0.0

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

    async def get(self, key: str) -> bytes | None:
        try:
            value: bytes | None = await self._redis.get(self._prefix + key)
        except self._errors as exc:
            self._failed("get", exc)
            return await self._fallback.get(key)
        return value if value is not None else await self._fallback.get(key)

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
        await self._redis.aclose()
