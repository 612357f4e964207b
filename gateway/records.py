"""Request records: an append-only log written off the request path.

``RecordLog.emit`` only puts the record on a bounded queue; a background task writes batches to
JSON Lines files (rotated by size) in a worker thread, and to a Redis stream when configured.
A full queue (in records or estimated bytes) drops the record, counts it in
``effgate_records_dropped_total`` and logs it: never silently. Records the Redis stream does
not take are held (bounded in bytes) and replayed when Redis is back. Format: docs/contracts.md.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import orjson

from gateway.kv import StoreStats, exact

log = logging.getLogger("effgate.records")

Record = dict[str, Any] | Callable[[], dict[str, Any]]
LOG_EVERY_S = 10.0


def iso(ts: float) -> str:
    """``2026-11-28T21:58:35.123Z``: UTC, milliseconds truncated (datetime's isoformat)."""
    sec = math.floor(ts)
    us = round((ts - sec) * 1_000_000)
    if us >= 1_000_000:
        sec, us = sec + 1, us - 1_000_000
    return f"{_second(sec)}.{us // 1000:03d}Z"


@functools.lru_cache(maxsize=4)
def _second(sec: int) -> str:
    """The date and time of one second: formatted once a second, not once a request."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))


class JSONLFile:
    """``records.jsonl`` rotated to ``records.jsonl.1`` ... ``.N`` when it passes ``max_bytes``."""

    def __init__(self, directory: Path, *, max_bytes: int, backups: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "records.jsonl"
        self._max = max_bytes
        self._backups = backups
        self._fh = self._open()

    def _open(self) -> BinaryIO:
        # unbuffered: a failed write (disk full) must not leave bytes behind for close() to fail on
        return self.path.open("ab", buffering=0)

    def write(self, lines: bytes) -> None:
        view = memoryview(lines)
        while view:  # a raw file may take part of a write; it raises rather than take nothing
            view = view[self._fh.write(view) or len(view) :]
        if self._fh.tell() >= self._max:
            self._rotate()

    def _rotate(self) -> None:
        self._fh.close()
        for i in range(self._backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                src.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self._backups > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self._fh = self._open()

    def close(self) -> None:
        self._fh.close()


# what a queued record is taken to cost when its producer gives no estimate (a dict, or an
# exchange of a small request): the record's fields and what the exchange keeps alive
RECORD_ESTIMATE = 2048
BUILD_SLICE = 4  # records the writer builds before it lets the event loop run again
STREAM_ENTRY_OVERHEAD = 64  # a payload in the stream's pending deque, beside its bytes
STREAM_BATCH = 128  # records per XADD pipeline


class RecordLog:
    """Bounded queue in front of the record sinks.

    The queue is bounded in records (``buffer``) and in estimated bytes (``buffer_bytes``):
    past either, new records are dropped and counted (sink ``buffer``). With a Redis stream,
    records Redis does not take (down, slow) are held, bounded by ``stream_max_bytes``, and
    replayed in order with a backoff (``retry_s`` doubling to ``retry_max_s``); past the bound
    the oldest held records are dropped (sink ``redis``), counted and logged once per interval.
    """

    def __init__(
        self,
        *,
        file: JSONLFile | None,
        redis: Any | None = None,
        stream: str | None = None,
        buffer: int = 10_000,
        on_drop: Callable[[str], None] | None = None,
        linger_s: float = 0.05,
        buffer_bytes: int = 16 * 1024 * 1024,
        stream_max_bytes: int = 16 * 1024 * 1024,
        stream_maxlen: int = 1_000_000,
        timeout_s: float = 1.0,
        retry_s: float = 0.1,
        retry_max_s: float = 5.0,
    ) -> None:
        self._linger_s = linger_s
        self._file = file
        self._redis = redis
        self._stream = stream
        self._stream_maxlen = stream_maxlen
        self._queue: asyncio.Queue[tuple[Record, int] | None] = asyncio.Queue(maxsize=buffer)
        self._on_drop = on_drop
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self._unlogged = 0
        self._logged_at = -LOG_EVERY_S
        self.queue = StoreStats("records_queue", buffer_bytes)
        self._queued_bytes = 0
        # the stream's held records (serialized, exact-size) and how many at the front were
        # counted as buffered (a write with them in it failed, or they came while Redis was down)
        self.stream_stats = StoreStats("records_stream", stream_max_bytes)
        self._held: deque[bytes] = deque()
        self._held_bytes = 0
        self._held_counted = 0
        self._timeout_s = timeout_s
        self._retry_s, self._retry_max_s = retry_s, retry_max_s
        self._delay = retry_s
        self._retry_at = 0.0  # monotonic; while in the future, Redis is not tried

    def store_stats(self) -> list[StoreStats]:
        q = self.queue
        q.bytes, q.entries = self._queued_bytes, self._queue.qsize()
        out = [q]
        if self._redis is not None and self._stream:
            s = self.stream_stats
            s.bytes, s.entries = self._held_bytes, len(self._held)
            out.append(s)
        return out

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="effgate-records")

    def emit(self, record: Record, size: int | None = None) -> None:
        """Queue a record: a dict, or a function that builds it (called by the writer, off
        the request's path: the response does not wait for the record to be built).
        ``size``: an estimate of the bytes it keeps alive while queued (default
        ``RECORD_ESTIMATE``)."""
        size = RECORD_ESTIMATE if size is None else size
        if self._queued_bytes + size > self.queue.max_bytes:
            self.queue.dropped += 1
            self._drop("buffer", 1)
            return
        try:
            self._queue.put_nowait((record, size))
        except asyncio.QueueFull:
            self.queue.dropped += 1
            self._drop("buffer", 1)
            return
        self._queued_bytes += size

    def _drop(self, sink: str, n: int) -> None:
        self.dropped += n
        if self._on_drop is not None:
            for _ in range(n):
                self._on_drop(sink)
        # one line per interval, not per record: an overloaded writer must not also flood
        # the log (the counter has every drop)
        self._unlogged += n
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            log.error(
                "dropped %d request record(s) since the last report: %s full or failing",
                self._unlogged,
                sink,
            )
            self._logged_at, self._unlogged = now, 0

    async def _next(self) -> tuple[Record, int] | None:
        """The next queued item; while stream records are held, wake for their retry too."""
        while self._held:
            wait = self._retry_at - time.monotonic()
            if wait <= 0:
                await self._flush_stream()
                continue
            try:
                async with asyncio.timeout(wait):
                    return await self._queue.get()
            except TimeoutError:
                continue
        return await self._queue.get()

    async def _run(self) -> None:
        done = False
        while not done:
            batch: list[Record] = []
            first = await self._next()
            # let a batch build up: one file write (a thread hop) per batch, not per request
            await asyncio.sleep(self._linger_s)
            item = first
            while True:
                if item is None:
                    done = True
                    break
                batch.append(item[0])
                self._queued_bytes -= item[1]
                if self._queue.empty() or len(batch) >= 512:
                    break
                item = self._queue.get_nowait()
            if batch:
                await self._write(batch)
        held = self._held
        if held:  # one last try at shutdown; what Redis does not take then is lost
            self._retry_at = 0.0
            await self._flush_stream()
            if held:
                log.error(
                    "redis unreachable at shutdown: %d stream record(s) lost", len(self._held)
                )
                self.stream_stats.dropped += len(self._held)
                self._drop("redis", len(self._held))
                self._held.clear()
                self._held_bytes = self._held_counted = 0

    async def _write(self, items: list[Record]) -> None:
        batch: list[dict[str, Any]] = []
        for k, item in enumerate(items, 1):
            batch.append(item if isinstance(item, dict) else item())
            if k % BUILD_SLICE == 0:  # building a record can take a fraction of a
                await asyncio.sleep(0)  # millisecond (its signature): let requests run between
        if self._file is not None:
            data = b"".join(orjson.dumps(r) + b"\n" for r in batch)
            try:
                await anyio.to_thread.run_sync(self._file.write, data)
            except OSError as exc:
                log.error("record file write failed: %s", exc)
                self._drop("file", len(batch))
        if self._redis is not None and self._stream:
            self._hold([exact(orjson.dumps(r)) for r in batch])
            await self._flush_stream()

    def _hold(self, payloads: list[bytes]) -> None:
        held, stats = self._held, self.stream_stats
        held.extend(payloads)
        self._held_bytes += sum(len(p) for p in payloads) + STREAM_ENTRY_OVERHEAD * len(payloads)
        if self._retry_at > time.monotonic():  # Redis is down: these wait for the retry
            stats.buffered += len(held) - self._held_counted
            self._held_counted = len(held)
        n = 0
        while self._held_bytes > stats.max_bytes and held:
            self._held_bytes -= len(held.popleft()) + STREAM_ENTRY_OVERHEAD
            self._held_counted = max(0, self._held_counted - 1)
            n += 1
        if n:
            stats.dropped += n
            self._drop("redis", n)

    async def _flush_stream(self) -> None:
        """Write held records to the stream, oldest first, until done or Redis fails."""
        redis = self._redis
        if redis is None or self._retry_at > time.monotonic():
            return
        held, stats = self._held, self.stream_stats
        while held:
            chunk = list(itertools.islice(held, STREAM_BATCH))
            try:
                async with asyncio.timeout(self._timeout_s):
                    async with redis.pipeline(transaction=False) as pipe:
                        for payload in chunk:
                            pipe.xadd(self._stream, {"record": payload}, maxlen=self._stream_maxlen)
                        await pipe.execute()
            except Exception as exc:  # any redis failure: hold, retry later, keep serving
                if self._retry_at == 0.0 or self._delay == self._retry_s:
                    log.error(
                        "record stream write failed (%s); holding records", type(exc).__name__
                    )
                stats.buffered += len(held) - self._held_counted
                self._held_counted = len(held)
                self._retry_at = time.monotonic() + self._delay
                self._delay = min(self._delay * 2, self._retry_max_s)
                return
            for _ in chunk:
                self._held_bytes -= len(held.popleft()) + STREAM_ENTRY_OVERHEAD
            replayed = min(len(chunk), self._held_counted)
            stats.replayed += replayed
            self._held_counted -= replayed
            self._delay = self._retry_s

    async def aclose(self) -> None:
        """Write everything queued so far, then stop."""
        if self._task is not None:
            await self._queue.put(None)
            await self._task
            self._task = None
        if self._file is not None:
            self._file.close()
