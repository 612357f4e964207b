"""A cheap closed-loop HTTP/1.1 load generator: keep-alive connections, pre-built request bytes.

    python -m benchmarks.loadgen --port P --model small [--stream] [--requests N | --duration S]
        [--concurrency C]      # e.g. to drive a gateway while py-spy records it

Each connection is one ``asyncio.Protocol`` that parses responses with httptools (C) and writes
its next request from the parser's message-complete callback: no task, future or coroutine per
request, so the client costs far less per request than the servers it measures. A run opens its
connections first and starts the clock only when all are up, so connect time is not counted.

Timing per request: ``latency`` from the write of the request to the end of the response, and
``first`` from the write to the first body bytes (for an SSE stream: the first event, the time to
first token the client sees).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import cast

import httptools
import orjson


@dataclass(frozen=True, slots=True)
class Sample:
    """What one run measured (seconds)."""

    latencies: tuple[float, ...]
    firsts: tuple[float, ...]
    errors: int
    elapsed_s: float
    server_cpu_s: float = math.nan  # CPU the measured server used meanwhile, when known

    @property
    def completed(self) -> int:
        return len(self.latencies)

    @property
    def rps(self) -> float:
        return self.completed / self.elapsed_s if self.elapsed_s > 0 else 0.0


def build_request(host: str, port: int, path: str, body: bytes, api_key: str) -> bytes:
    """One POST with a JSON body, as bytes ready to write on a keep-alive connection."""
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {api_key}\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _Budget:
    """How many more requests may start (a count, a deadline, or both), shared by connections."""

    def __init__(self, requests: int | None, deadline: float | None, conns: int) -> None:
        self.remaining = requests
        self.deadline = deadline
        self.open = conns
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.last = 0.0

    def take(self) -> bool:
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            return False
        if self.remaining is None:
            return True
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True

    def finish_one(self) -> None:
        self.open -= 1
        if self.open == 0 and not self.done.done():
            self.done.set_result(None)


class _Conn(asyncio.Protocol):
    def __init__(self, request: bytes, latencies: list[float], firsts: list[float]) -> None:
        self.request = request
        self.latencies = latencies
        self.firsts = firsts
        self.errors = 0
        self.budget: _Budget | None = None
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.t0 = 0.0
        self.first = 0.0
        self.status = 0
        self.busy = False
        self.finished = False

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.busy:
            self.errors += 1
            self.busy = False
        self._finish()

    # -- httptools callbacks ------------------------------------------------------------------
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if not self.first:
            self.first = time.perf_counter()

    def on_message_complete(self) -> None:
        now = time.perf_counter()
        self.busy = False
        if self.status == 200:
            self.latencies.append(now - self.t0)
            self.firsts.append((self.first or now) - self.t0)
        else:
            self.errors += 1
        if self.budget is not None:
            self.budget.last = now
        self.fire()

    # -- driving --------------------------------------------------------------------------------
    def fire(self) -> None:
        """Send the next request, or close the connection when the budget is spent."""
        assert self.transport is not None and self.budget is not None
        if self.transport.is_closing() or not self.budget.take():
            self.transport.close()
            self._finish()
            return
        self.first = 0.0
        self.status = 0
        self.busy = True
        self.t0 = time.perf_counter()
        self.transport.write(self.request)

    def _fail(self) -> None:
        if self.busy:
            self.errors += 1
            self.busy = False
        if self.transport is not None:
            self.transport.close()
        self._finish()

    def _finish(self) -> None:
        if not self.finished and self.budget is not None:
            self.finished = True
            self.budget.finish_one()


async def run(
    host: str,
    port: int,
    request: bytes,
    *,
    concurrency: int,
    requests: int | None = None,
    duration_s: float | None = None,
) -> Sample:
    """``concurrency`` connections, each sending ``request`` back to back until the budget ends.

    ``requests`` bounds the total count, ``duration_s`` the time (both may be given; one must).
    Connection failures raise ``OSError`` before anything is sent.
    """
    if requests is None and duration_s is None:
        raise ValueError("give requests, duration_s, or both")
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    firsts: list[float] = []
    conns: list[_Conn] = []
    try:
        for _ in range(concurrency):
            conn = _Conn(request, latencies, firsts)
            await loop.create_connection(lambda c=conn: c, host, port)  # type: ignore[misc]
            conns.append(conn)
    except OSError:
        for c in conns:
            if c.transport is not None:
                c.transport.close()
        raise
    start = time.perf_counter()
    deadline = start + duration_s if duration_s is not None else None
    budget = _Budget(requests, deadline, len(conns))
    budget.last = start
    for c in conns:
        c.budget = budget
    for c in conns:
        c.fire()
    await budget.done
    errors = sum(c.errors for c in conns)
    return Sample(tuple(latencies), tuple(firsts), errors, budget.last - start)


async def first_success(
    host: str, port: int, request: bytes, *, timeout_s: float, poll_s: float = 0.005
) -> float:
    """Retry ``request`` until it is answered 200; returns ``time.monotonic()`` at that moment.

    Raises ``TimeoutError`` when nothing succeeds within ``timeout_s``.
    """
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            sample = await run(host, port, request, concurrency=1, requests=1)
        except OSError:
            sample = None
        if sample is not None and sample.completed:
            return time.monotonic()
        await asyncio.sleep(poll_s)
    raise TimeoutError(f"no successful answer from {host}:{port} within {timeout_s:g} s")


def main(argv: list[str] | None = None) -> int:
    import argparse

    import uvloop

    from benchmarks.report import Stats
    from benchmarks.scenarios import Scenario

    p = argparse.ArgumentParser(prog="python -m benchmarks.loadgen")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", default="small", help="model name sent (default small)")
    p.add_argument("--stream", action="store_true")
    p.add_argument("--requests", type=int)
    p.add_argument("--duration", type=float)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--api-key", default="sk-bench")
    args = p.parse_args(argv)
    body = Scenario("stream" if args.stream else "json", "passthrough").body("direct")
    body = body.replace(b'"model":"mock-small"', b'"model":' + orjson.dumps(args.model))
    request = build_request("127.0.0.1", args.port, "/v1/chat/completions", body, args.api_key)
    sample = uvloop.run(
        run("127.0.0.1", args.port, request, concurrency=args.concurrency,
            requests=args.requests, duration_s=args.duration or (None if args.requests else 10.0))
    )  # fmt: skip
    s = Stats.of([sample])
    print(f"n={s.count} errors={s.errors} p50={s.p50_ms:.3f} ms p99={s.p99_ms:.3f} ms "
          f"first p50={s.first_p50_ms:.3f} ms {s.rps:.0f} req/s")  # fmt: skip
    return 0 if s.errors == 0 else 1


if __name__ == "__main__":
    import sys

    sys.exit(main())
