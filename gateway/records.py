"""Request records: an append-only log written off the request path.

``RecordLog.emit`` only puts the record on a bounded queue; a background task writes batches to
JSON Lines files (rotated by size) in a worker thread, and to a Redis stream when configured.
A full queue drops the record, counts it in ``effgate_records_dropped_total`` and logs it: never
silently. Format: docs/contracts.md.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import orjson

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


class RecordLog:
    """Bounded queue in front of the record sinks."""

    def __init__(
        self,
        *,
        file: JSONLFile | None,
        redis: Any | None = None,
        stream: str | None = None,
        buffer: int = 10_000,
        on_drop: Callable[[str], None] | None = None,
        linger_s: float = 0.05,
    ) -> None:
        self._linger_s = linger_s
        self._file = file
        self._redis = redis
        self._stream = stream
        self._queue: asyncio.Queue[Record | None] = asyncio.Queue(maxsize=buffer)
        self._on_drop = on_drop
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self._unlogged = 0
        self._logged_at = -LOG_EVERY_S

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="effgate-records")

    def emit(self, record: Record) -> None:
        """Queue a record: a dict, or a function that builds it (called by the writer, off
        the request's path: the response does not wait for the record to be built)."""
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self._drop("buffer", 1)

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

    async def _run(self) -> None:
        done = False
        while not done:
            batch: list[Record] = []
            item = await self._queue.get()
            # let a batch build up: one file write (a thread hop) per batch, not per request
            await asyncio.sleep(self._linger_s)
            while True:
                if item is None:
                    done = True
                    break
                batch.append(item)
                if self._queue.empty() or len(batch) >= 512:
                    break
                item = self._queue.get_nowait()
            if batch:
                await self._write(batch)

    async def _write(self, items: list[Record]) -> None:
        batch = [item if isinstance(item, dict) else item() for item in items]
        if self._file is not None:
            data = b"".join(orjson.dumps(r) + b"\n" for r in batch)
            try:
                await anyio.to_thread.run_sync(self._file.write, data)
            except OSError as exc:
                log.error("record file write failed: %s", exc)
                self._drop("file", len(batch))
        if self._redis is not None and self._stream:
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for r in batch:
                        pipe.xadd(self._stream, {"record": orjson.dumps(r)}, maxlen=1_000_000)
                    await pipe.execute()
            except Exception as exc:  # any redis failure: count, keep serving
                log.error("record stream write failed: %s", type(exc).__name__)
                self._drop("redis", len(batch))

    async def aclose(self) -> None:
        """Write everything queued so far, then stop."""
        if self._task is not None:
            await self._queue.put(None)
            await self._task
            self._task = None
        if self._file is not None:
            self._file.close()
