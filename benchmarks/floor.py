"""The floor under the gateway: what uvicorn and an upstream call cost with no gateway at all.

    python -m benchmarks.floor [--requests N] [--duration S] [--rounds R] [--cores 1:0]

Three minimal ASGI apps run under uvicorn exactly as ``effgate serve`` runs (uvloop,
httptools, one worker, pinned to the gateway's core), each beside the fake upstream, measured
with the same interleaved rounds as ``benchmarks.overhead``:

- ``hello``: answers at once, no upstream call (uvicorn's own cost);
- ``aiohttp``: forwards the body to the fake with one pooled ``aiohttp.ClientSession``;
- ``httptools``: the same through ``gateway.upstreams.httptools_client`` (the gateway's
  default client), nothing else of the gateway.

The difference between ``httptools`` here and the gateway's passthrough in
``benchmarks.overhead`` is what effgate itself adds; what ``httptools`` adds over ``direct``
is the price of being a proxy at all on this machine (a second hop, two more wake-ups).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson
import uvloop

from benchmarks.procs import Proc, free_port, parse_cores, pinned_self
from benchmarks.procs import spawn as spawn_proc
from benchmarks.report import latency_table, saturation_table
from benchmarks.runner import Budget, measure
from benchmarks.scenarios import Scenario

KINDS = ("hello", "aiohttp", "httptools")
_state: dict[str, Any] = {}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """One of the floor apps, chosen by ``FLOOR_KIND``; the upstream is ``FLOOR_UPSTREAM``."""
    kind = os.environ["FLOOR_KIND"]
    if scope["type"] == "lifespan":
        await receive()
        _state["client"] = _client(kind, os.environ.get("FLOOR_UPSTREAM", ""))
        await send({"type": "lifespan.startup.complete"})
        await receive()
        client = _state.pop("client")
        if client is not None:
            await (client.close() if kind == "aiohttp" else client.aclose())
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = (await receive()).get("body", b"")
    if kind == "hello":
        data = b'{"object":"chat.completion","choices":[]}'
    else:
        request = orjson.loads(body)
        request["model"] = "mock-small"
        data = await _forward(kind, _state["client"], request)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def _client(kind: str, upstream: str) -> Any:
    if kind == "aiohttp":
        import aiohttp

        return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
    if kind == "httptools":
        from gateway.upstreams.httptools_client import HttptoolsUpstream
        from policies.compiled import ModelEntry, Timeouts

        entry = ModelEntry(
            id="small", provider="openai", base_url=upstream, upstream_model="mock-small",
            api_key_env=None, input_usd_per_mtok=0.0, output_usd_per_mtok=0.0,
            cached_input_usd_per_mtok=None, context_window=128000, max_output_tokens=None,
            expected_output_tokens=None, skill=None, capabilities=frozenset(), local_gpus=(),
            timeouts=Timeouts(connect_s=5, first_byte_s=30, idle_s=30, total_s=30),
            max_retries=0, max_connections=256, price_source="policy", skill_source="none",
        )  # fmt: skip
        return HttptoolsUpstream(entry)
    return None


async def _forward(kind: str, client: Any, request: dict[str, Any]) -> bytes:
    if kind == "aiohttp":
        url = os.environ["FLOOR_UPSTREAM"] + "/chat/completions"
        headers = {"content-type": "application/json"}
        async with client.post(url, data=orjson.dumps(request), headers=headers) as resp:
            data: bytes = await resp.read()
            return data
    reply = await client.complete("/chat/completions", request, 30.0)
    out: bytes = reply.body
    return out


async def _run(args: argparse.Namespace, work: Path) -> str:
    pin = parse_cores(args.cores)
    server_cpus = None if pin is None else pin.server
    client_cpus = None if pin is None else pin.client
    procs = []
    try:
        fake = spawn_proc(
            "fake",
            [sys.executable, "-m", "fake_upstream", "--port", "0", "--models", "mock-small"],
            cpus=client_cpus,
            log_dir=work,
        )
        procs.append(fake)
        fake_port = fake.wait_port(60)
        upstream = f"http://127.0.0.1:{fake_port}/v1"
        servers: dict[str, tuple[int, int]] = {}
        apps: list[tuple[Proc, int]] = []
        for kind in KINDS:
            port = free_port()
            proc = spawn_proc(
                kind,
                [
                    sys.executable, "-m", "uvicorn", "benchmarks.floor:app", "--port", str(port),
                    "--loop", "uvloop", "--http", "httptools", "--no-access-log",
                    "--no-proxy-headers", "--no-server-header", "--log-level", "warning",
                ],
                cpus=server_cpus,
                log_dir=work,
                env={"FLOOR_KIND": kind, "FLOOR_UPSTREAM": upstream},
            )  # fmt: skip
            procs.append(proc)
            servers[kind] = (port, proc.pid)
            apps.append((proc, port))
        # each app serves once it accepts (a fixed 3 s sleep was too short on a loaded
        # machine: the next app's first connection was refused)
        for proc, port in apps:
            await asyncio.to_thread(proc.wait_accepting, port, 60)
        for p in procs:
            p.check_alive()
        latency, saturation = [], []
        sc = Scenario("json", "passthrough")
        with pinned_self(client_cpus):
            for kind, server in servers.items():
                pair = {"direct": (fake_port, fake.pid), "gateway": server}
                budget = Budget(args.requests, rounds=args.rounds, warmup=args.warmup)
                for row in await measure(sc, pair, 1, budget, "unused"):  # type: ignore[arg-type]
                    latency.append(row if row.target == "direct" else _named(row, kind))
                budget = Budget(duration_s=args.duration, rounds=args.rounds, warmup=args.warmup)
                rows = await measure(sc, pair, args.saturation, budget, "unused")  # type: ignore[arg-type]
                for row in rows:
                    saturation.append(row if row.target == "direct" else _named(row, kind))
        lines = ["## The floor: uvicorn and one upstream call, no gateway", ""]
        lines += ["### Latency, c=1", "", *latency_table(latency), ""]
        lines += [f"### Saturation, c={args.saturation}", "", *saturation_table(saturation), ""]
        return "\n".join(lines)
    finally:
        for p in reversed(procs):
            p.stop()


def _named(row: Any, kind: str) -> Any:
    import dataclasses

    return dataclasses.replace(row, target=kind)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--saturation", type=int, default=64, help="closed-loop concurrency")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--cores", default="1:0", help="SERVER:CLIENT cpu lists, or off")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="effgate-floor-") as tmp:
        print(uvloop.run(_run(args, Path(tmp))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
