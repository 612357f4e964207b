"""What long prompts cost everyone else: short requests' latency while long ones arrive.

    python -m benchmarks.long_prompts [--sizes 450000 1000000] [--seconds 8] [--concurrency 4]
        [--long-clients 1] [--source DIR] [--json OUT]

One fake upstream and the gateway (`effgate serve`, the policy of `benchmarks.scenarios`:
context windows of 128,000 tokens, a route with a quality bar, so requests are scored and
their records carry signatures) as separate processes. A closed loop of short chat requests
(`--concurrency` at a time) runs alone for `--seconds`, then again while `--long-clients`
more clients (one by default) send a long prompt of each size back to back: ~450 KB is near
the window (its tokens are counted exactly) and fits, ~1 MB does not (400
context_length_exceeded). Everything the gateway does with a request on its event loop
(parsing, counting, scoring, the record's signature) delays the short requests; the report
gives their p50 and p99 alone and during, as ratios, and the long requests' own latency and
status codes.

`--source DIR` runs the gateway from another checkout (a `git worktree` of the commit to
compare with), so two runs in a row compare before and after on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.procs import Proc, free_port, spawn
from benchmarks.report import percentile
from benchmarks.scenarios import policy_yaml

WORDS = ("the", "model", "returns", "data", "value", "of", "function", "cost", "Σ", "数据")


def long_text(chars: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    out: list[str] = []
    n = 0
    while n <= chars:  # the join has one space fewer than counted
        w = rng.choice(WORDS)
        out.append(w)
        n += len(w) + 1
    return " ".join(out)[:chars]


def _chat(text: str) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": text}], "max_tokens": 16}


async def _short_loop(c: httpx.AsyncClient, out: list[float], stop: asyncio.Event) -> None:
    body = _chat("Summarise in one line: the meeting moved to Tuesday.")
    while not stop.is_set():
        t = time.perf_counter()
        r = await c.post("/v1/chat/completions", json=body)
        r.raise_for_status()
        out.append(time.perf_counter() - t)


async def _long_loop(
    c: httpx.AsyncClient,
    text: str,
    out: list[tuple[float, int, int]],
    stop: asyncio.Event,
    client: int = 0,
) -> None:
    payload = json.dumps(_chat(text)).encode()
    headers = {"content-type": "application/json"}
    while not stop.is_set():
        t = time.perf_counter()
        r = await c.post("/v1/chat/completions", content=payload, headers=headers)
        out.append((time.perf_counter() - t, r.status_code, client))


async def _phase(
    c: httpx.AsyncClient, seconds: float, concurrency: int, text: str | None, long_clients: int = 1
) -> dict[str, Any]:
    short: list[float] = []
    long: list[tuple[float, int, int]] = []
    stop = asyncio.Event()
    tasks = [asyncio.create_task(_short_loop(c, short, stop)) for _ in range(concurrency)]
    if text is not None:
        tasks += [
            asyncio.create_task(_long_loop(c, text, long, stop, k)) for k in range(long_clients)
        ]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    out: dict[str, Any] = {
        "short_n": len(short),
        "short_p50_ms": round(1000 * percentile(short, 50), 2),
        "short_p99_ms": round(1000 * percentile(short, 99), 2),
    }
    if text is not None:
        out["long_chars"] = len(text)
        out["long_clients"] = long_clients
        out["long_n"] = len(long)
        out["long_mean_ms"] = (
            round(1000 * statistics.mean(t for t, _, _ in long), 1) if long else None
        )
        out["long_status"] = sorted({s for _, s, _ in long})
        out["long_per_client"] = [sum(1 for *_, k in long if k == i) for i in range(long_clients)]
    return out


async def _ready(c: httpx.AsyncClient, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while True:
        try:
            if (await c.post("/v1/chat/completions", json=_chat("hi"))).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > end:
            raise TimeoutError("the gateway did not serve a request in time")
        await asyncio.sleep(0.1)


def start(args: argparse.Namespace, work: Path) -> tuple[list[Proc], int]:
    """The fake upstream and the gateway, started; the gateway's port."""
    fake_argv = [sys.executable, "-m", "gateway.cli", "fake-upstream", "--port", "0"]
    fake = spawn("fake", [*fake_argv, "--models", "mock-small,mock-large"], cpus=None, log_dir=work)
    procs = [fake]
    try:
        port_fake = fake.wait_port(60)
        policy = work / "policy.yaml"
        policy.write_text(policy_yaml(port_fake, port_fake), encoding="utf-8")
        port = free_port()
        env = {"EFFGATE_RECORDS_DIR": str(work / "records")}
        source = None if args.source is None else Path(args.source).resolve()
        if source is not None:
            env["PYTHONPATH"] = str(source) + os.pathsep + os.environ.get("PYTHONPATH", "")
        argv = [sys.executable, "-m", "gateway.cli", "serve", "--policy", str(policy)]
        argv += ["--port", str(port)]
        procs.append(spawn("gateway", argv, cpus=None, log_dir=work, env=env, cwd=source))
    except BaseException:
        for p in reversed(procs):
            p.stop()
        raise
    return procs, port


async def run(args: argparse.Namespace, port: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=args.concurrency + args.long_clients + 1)
    origin = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=origin, timeout=120, limits=limits) as c:
        await _ready(c, 60)
        await _phase(c, 1.0, args.concurrency, None)  # warm-up
        phases = [await _phase(c, args.seconds, args.concurrency, None)]
        for size in args.sizes:
            text = long_text(size)
            phases.append(await _phase(c, args.seconds, args.concurrency, text, args.long_clients))
    return {"source": str(args.source or "."), "phases": phases}


def report(result: dict[str, Any]) -> str:
    alone = result["phases"][0]
    lines = [
        f"gateway from {result['source']}",
        "| long prompt | short p50 | short p99 | p50 ratio | p99 ratio | long: n, mean, status |",
        "|---|---:|---:|---:|---:|---|",
        f"| none | {alone['short_p50_ms']} ms | {alone['short_p99_ms']} ms | 1 | 1 | |",
    ]
    for ph in result["phases"][1:]:
        at_once = ph.get("long_clients", 1)
        what = f"{ph['long_chars']:,} chars" + (f", {at_once} at once" if at_once > 1 else "")
        r50 = ph["short_p50_ms"] / alone["short_p50_ms"]
        r99 = ph["short_p99_ms"] / alone["short_p99_ms"]
        lines.append(
            f"| {what} | {ph['short_p50_ms']} ms | {ph['short_p99_ms']} ms "
            f"| {r50:.2f} | {r99:.2f} | {ph['long_n']}, {ph['long_mean_ms']} ms, "
            f"{ph['long_status']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.long_prompts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[450_000, 1_000_000])
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--long-clients", type=int, default=1, help="long-prompt senders at once")
    p.add_argument("--source", type=Path, help="run the gateway from this checkout")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="effgate-long-") as tmp:
        procs, port = start(args, Path(tmp))
        try:
            result = asyncio.run(run(args, port))
        finally:
            for proc in reversed(procs):
                proc.stop()
    print(report(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
