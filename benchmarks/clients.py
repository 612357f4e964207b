"""What one upstream call costs the caller's CPU, by HTTP client, against the fake upstream.

    python -m benchmarks.clients [--requests 2000] [--concurrency 1,16] [--cores 1:0 | off]

The gateway spends most of its per-request CPU in its upstream client (see docs/benchmarks.md);
this measures the alternatives on the same request and the same fake, in this process's own CPU
time (``time.process_time``; the fake runs in a subprocess, so its work is not counted):

- ``httpx``: what ``gateway.upstreams.httpx_client.HttpxUpstream.complete`` does (build_request,
  ``send(stream=True)``, ``aread``, ``aclose``) on a pooled ``AsyncClient``, then ``orjson.loads``
- ``aiohttp``: ``ClientSession.post`` + ``read`` on a pooled ``TCPConnector``, then ``orjson.loads``
- ``raw``: ``benchmarks.loadgen`` (httptools on an ``asyncio.Protocol``), the floor for Python
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx
import orjson
import uvloop

from benchmarks.loadgen import build_request, run
from benchmarks.procs import parse_cores, pinned_self, pinning_available, spawn
from benchmarks.scenarios import Scenario

Call = Callable[[], Awaitable[None]]


async def _closed_loop(call: Call, concurrency: int, requests: int) -> float:
    """CPU seconds of this process for ``requests`` calls, ``concurrency`` at a time."""

    async def worker(n: int) -> None:
        for _ in range(n):
            await call()

    share = [requests // concurrency + (i < requests % concurrency) for i in range(concurrency)]
    await asyncio.gather(*(worker(min(n, 20)) for n in share))  # warm the pool
    t0 = time.process_time()
    await asyncio.gather(*(worker(n) for n in share))
    return time.process_time() - t0


async def measure(port: int, concurrency: int, requests: int) -> dict[str, float]:
    """Microseconds of CPU per request for each client."""
    base = f"http://127.0.0.1:{port}/v1"
    body = Scenario("json", "passthrough").body("direct")
    out: dict[str, float] = {}
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits) as client:

        async def httpx_call() -> None:
            req = client.build_request("POST", "/chat/completions", content=body)
            resp = await client.send(req, stream=True)
            try:
                data = await resp.aread()
            finally:
                await resp.aclose()
            orjson.loads(data)

        out["httpx"] = await _closed_loop(httpx_call, concurrency, requests)
    connector = aiohttp.TCPConnector(limit=100)
    async with aiohttp.ClientSession(base + "/", connector=connector) as session:

        async def aiohttp_call() -> None:
            async with session.post("chat/completions", data=body, headers=headers) as resp:
                orjson.loads(await resp.read())

        out["aiohttp"] = await _closed_loop(aiohttp_call, concurrency, requests)
    raw = build_request("127.0.0.1", port, "/v1/chat/completions", body, "x")
    await run("127.0.0.1", port, raw, concurrency=concurrency, requests=min(requests, 100))
    t0 = time.process_time()
    await run("127.0.0.1", port, raw, concurrency=concurrency, requests=requests)
    out["raw"] = time.process_time() - t0
    return {name: cpu / requests * 1e6 for name, cpu in out.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.clients",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", default="1,16")
    p.add_argument("--cores", default="1:0", help="THIS:FAKE cpu lists, or off")
    args = p.parse_args(argv)
    pin = parse_cores(args.cores)
    if pin is not None and pinning_available(pin) is not None:
        pin = None
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="effgate-clients-") as tmp:
        fake = spawn("fake", [sys.executable, "-m", "gateway.cli", "fake-upstream", "--port", "0",
                              "--models", "mock-small"],
                     cpus=None if pin is None else pin.client, log_dir=Path(tmp))  # fmt: skip
        try:
            port = fake.wait_port(60)
            print("| client | " + " | ".join(f"c={c} us CPU/req" for c in
                                             args.concurrency.split(",")) + " |")  # fmt: skip
            print("|---|" + "---|" * len(args.concurrency.split(",")))
            rows: dict[str, list[float]] = {}
            with pinned_self(None if pin is None else pin.server):
                for c in (int(x) for x in args.concurrency.split(",")):
                    res = uvloop.run(measure(port, c, args.requests))
                    for name, us in res.items():
                        rows.setdefault(name, []).append(us)
            for name, values in rows.items():
                print(f"| {name} | " + " | ".join(f"{v:.0f}" for v in values) + " |")
        finally:
            fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
