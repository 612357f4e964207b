"""Memory: the gateway's RSS at idle, after N requests, and its slope under steady load.

    python -m benchmarks.memory [--requests 200000] [--soak-s 0] [--concurrency 16]
        [--stream-share 0.1] [--redis] [--json OUT]

Starts the fake upstream and one gateway process (``effgate serve``, default settings apart
from the policy, a records directory and an API key; ``--redis`` adds a ``redis-server`` and
``EFFGATE_REDIS_URL``), then drives ``--requests`` requests through it (routed JSON requests
and a ``--stream-share`` of streams, so every request stores a feedback summary and writes a
record) with closed-loop keep-alive connections, sampling the gateway's RSS (``/proc/<pid>``,
or psutil where installed) once a second. ``--soak-s`` keeps the same load going for that many
seconds more. It prints the idle RSS, the RSS after the requests, the peak, and the slope (MB
per minute, least squares) over the second half of the run, plus the store gauges the
gateway exports (``effgate_store_bytes``, ``effgate_store_evictions_total``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

from benchmarks.loadgen import build_request, run
from benchmarks.procs import Proc, free_port, spawn, status_kb
from benchmarks.scenarios import MESSAGES, policy_yaml
from benchmarks.standin import default_estimator_error, write_standin


def rss_reader(pid: int) -> Callable[[], int]:
    """A function returning ``pid``'s resident set in bytes (psutil if installed, else /proc)."""
    try:
        import psutil  # type: ignore[import-untyped]

        proc = psutil.Process(pid)
        return lambda: int(proc.memory_info().rss)
    except ImportError:
        pass

    return lambda: status_kb(pid, "VmRSS") * 1024


def slope_mb_per_min(points: list[tuple[float, int]]) -> float:
    """Least-squares slope of (seconds, bytes) points, in MB per minute."""
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    mb = sum(b for _, b in points) / n
    var = sum((t - mt) ** 2 for t, _ in points) or 1.0
    return sum((t - mt) * (b - mb) for t, b in points) / var * 60 / (1 << 20)


def scrape(url: str, prefixes: tuple[str, ...]) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(prefixes):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def body(model: str, i: int, stream: bool) -> bytes:
    messages = [MESSAGES[0], {"role": "user", "content": f"{MESSAGES[1]['content']} ({i})"}]
    obj: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": 64}
    if stream:
        obj["stream"] = True
        obj["stream_options"] = {"include_usage": True}
    return orjson.dumps(obj)


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="effgate-memory-"))
        self.procs: list[Proc] = []
        self.api_key = "sk-bench-" + secrets.token_hex(16)
        self.samples: list[tuple[float, int]] = []  # (s since load start, RSS bytes)
        self.marks: dict[str, float] = {}

    def spawn(self, name: str, argv: list[str], **kw: Any) -> Proc:
        proc = spawn(name, argv, cpus=None, log_dir=self.work, **kw)
        self.procs.append(proc)
        return proc

    def start(self) -> tuple[int, Proc]:
        fake = self.spawn(
            "fake",
            [sys.executable, "-m", "gateway.cli", "fake-upstream", "--port", "0"]
            + ["--models", "mock-small,mock-large", "--reply-words", "40"],
        )
        fake_port = fake.wait_port(60)
        policy = self.work / "policy.yaml"
        policy.write_text(policy_yaml(fake_port, fake_port))
        env = {
            "EFFGATE_RECORDS_DIR": str(self.work / "records"),
            "EFFGATE_API_KEYS": json.dumps({self.api_key: "bench"}),
            "EFFGATE_LOG_LEVEL": "warning",
        }
        if default_estimator_error() is not None:
            env["EFFGATE_ESTIMATOR_PATH"] = str(write_standin(self.work / "standin"))
        if self.args.redis:
            env["EFFGATE_REDIS_URL"] = self.start_redis()
        port = free_port()
        gw = self.spawn(
            "gateway",
            [sys.executable, "-m", "gateway.cli", "serve", "--policy", str(policy)]
            + ["--host", "127.0.0.1", "--port", str(port)],
            env=env,
        )
        deadline = time.monotonic() + 90
        while True:
            gw.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    return port, gw
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not become ready:\n{gw.tail()}")
            time.sleep(0.1)

    def start_redis(self) -> str:
        import shutil

        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("--redis: redis-server is not installed")
        port = free_port()
        self.spawn(
            "redis",
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
            + ["--appendonly", "no"],
        )
        time.sleep(0.5)
        return f"redis://127.0.0.1:{port}/0"

    async def drive(self, port: int, rss: Callable[[], int]) -> dict[str, Any]:
        a = self.args
        streams = max(0, min(a.concurrency - 1, round(a.concurrency * a.stream_share)))
        jsons = a.concurrency - streams
        t0 = time.monotonic()
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                self.samples.append((time.monotonic() - t0, rss()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)

        sampler = asyncio.create_task(sample())
        done = errors = 0
        batch = 0
        # batches of distinct bodies (a varying prompt), so the gateway sees varied requests
        step = 5000
        target = a.requests
        progress_at = 0
        deadline: float | None = None
        while deadline is None or time.monotonic() < deadline:
            if done >= target and deadline is None:
                self.marks["requests_done_s"] = time.monotonic() - t0
                if a.soak_s <= 0:
                    break
                deadline = time.monotonic() + a.soak_s
                continue
            n = step if deadline is None else None
            if n is not None:
                n = min(step, target - done)
            runs = []
            json_req = build_request(
                "127.0.0.1", port, "/v1/chat/completions", body("auto", batch, False), self.api_key
            )
            json_n = None if n is None else n - (n * streams) // a.concurrency
            runs.append(
                run("127.0.0.1", port, json_req, concurrency=jsons, requests=json_n,
                    duration_s=None if n is not None else 5.0)
            )  # fmt: skip
            if streams:
                stream_req = build_request(
                    "127.0.0.1", port, "/v1/chat/completions", body("auto", batch, True),
                    self.api_key,
                )  # fmt: skip
                stream_n = None if n is None else (n * streams) // a.concurrency
                if stream_n != 0:
                    runs.append(
                        run("127.0.0.1", port, stream_req, concurrency=streams,
                            requests=stream_n, duration_s=None if n is not None else 5.0)
                    )  # fmt: skip
            for s in await asyncio.gather(*runs):
                done += s.completed
                errors += s.errors
            batch += 1
            if done - progress_at >= 20_000:
                progress_at = done
                print(
                    f"  {done} requests, {time.monotonic() - t0:.0f} s, "
                    f"RSS {rss() / (1 << 20):.1f} MB",
                    file=sys.stderr,
                )
        elapsed = time.monotonic() - t0
        self.marks.setdefault("requests_done_s", elapsed)
        stop.set()
        await sampler
        self.samples.append((elapsed, rss()))
        return {"completed": done, "errors": errors, "elapsed_s": round(elapsed, 1)}

    def main(self) -> dict[str, Any]:
        try:
            port, gw = self.start()
            rss = rss_reader(gw.pid)
            time.sleep(1.0)
            idle = rss()
            load = asyncio.run(self.drive(port, rss))
            at_n = next(
                (b for t, b in reversed(self.samples) if t <= self.marks["requests_done_s"]),
                self.samples[-1][1],
            )
            end = self.samples[-1][0]
            second_half = [(t, b) for t, b in self.samples if t >= end / 2]
            soak = [(t, b) for t, b in self.samples if t >= self.marks["requests_done_s"]]
            url = f"http://127.0.0.1:{port}"
            stores = scrape(url, ("effgate_store_", "effgate_records_"))
            gw.check_alive()
        finally:
            for p in reversed(self.procs):
                p.stop()
        mb = 1 << 20
        return {
            "requests": self.args.requests,
            "soak_s": self.args.soak_s,
            "concurrency": self.args.concurrency,
            "stream_share": self.args.stream_share,
            "redis": self.args.redis,
            **load,
            "rss_mb": {
                "idle": round(idle / mb, 1),
                "after_requests": round(at_n / mb, 1),
                "peak": round(max(b for _, b in self.samples) / mb, 1),
                "end": round(self.samples[-1][1] / mb, 1),
                "slope_second_half_mb_per_min": round(slope_mb_per_min(second_half), 2),
                "slope_soak_mb_per_min": round(slope_mb_per_min(soak), 2)
                if len(soak) > 2
                else None,
                "series": [
                    (round(t), round(b / mb, 1))
                    for t, b in self.samples[:: max(1, len(self.samples) // 20)]
                ],
            },
            "metrics": stores,
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.memory", description=__doc__.split("\n")[0]
    )
    p.add_argument("--requests", type=int, default=200_000)
    p.add_argument("--soak-s", type=float, default=0.0, help="seconds of load after --requests")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--stream-share", type=float, default=0.1)
    p.add_argument("--redis", action="store_true", help="run with a redis-server")
    p.add_argument("--json", type=Path)
    p.add_argument("--max-rss-mb", type=float, default=250.0, help="exit 1 above this")
    args = p.parse_args(argv)
    out = Run(args).main()
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return 1 if out["rss_mb"]["peak"] > args.max_rss_mb or out["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
