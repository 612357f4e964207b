"""Soak: mixed traffic from several tenants, with upstream faults and a Redis restart.

    python -m benchmarks.soak [--rate 40] [--duration 120] [--tenants 3] [--stream-share 0.3]
        [--fault-share 0.05] [--redis-restart-at 0.5] [--json soak.json]

Starts a real ``redis-server``, the fake upstream (two models) and one gateway process
(``effgate serve``, default settings apart from the files it is given) with a tenants file:
each tenant has a daily budget and an rpm limit, one of them a budget small enough to run out
mid-soak. An open-loop driver sends ``--rate`` requests a second (Poisson arrivals), each from
a random tenant, JSON or streaming, and a ``--fault-share`` of them carrying a fault marker
the fake upstream acts on (503, 429, a connection reset, a hang past the first-byte deadline,
a stream cut after two chunks). At ``--redis-restart-at`` of the run Redis is killed and
started again on the same port three seconds later.

It reports throughput, responses by cause (status and error code), latency p50/p99, the
gateway's RSS over time (and its slope over the second half), each tenant's budget spent
against the budget set (it must never exceed it), and the request records the gateway wrote
against the requests it answered (after a graceful stop they must be equal). Exit 1 when a
budget was exceeded, a record is missing or a request went unanswered past its deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from benchmarks.procs import Proc, free_port, spawn, status_kb
from gateway.tenants import digest, new_key

FAULTS = (
    ("status_503", "[[fault:status=503]]"),
    ("status_429", "[[fault:status=429]]"),
    ("reset", "[[fault:reset]]"),
    ("hang", "[[fault:hang]]"),
    ("cut", "[[fault:cut=2]]"),
)
DEADLINE_S = 15.0  # no request may take longer (the policy's total timeout is 3 s)


@dataclass
class Result:
    started: float
    latency_s: float
    status: int
    cause: str
    tenant: str
    stream: bool


@dataclass
class Soak:
    results: list[Result] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)  # (s since start, kB)
    events: list[tuple[float, str]] = field(default_factory=list)


def policy(base_url: str) -> dict[str, Any]:
    timeouts = {"connect_s": 1.0, "first_byte_s": 1.0, "idle_s": 1.0, "total_s": 3.0}
    models = [
        {
            "id": name,
            "provider": "openai",
            "base_url": base_url,
            "upstream_model": f"mock-{name}",
            "input_usd_per_mtok": price[0],
            "output_usd_per_mtok": price[1],
            "context_window": 128000,
            "max_output_tokens": 64,
            "skill": skill,
            "timeouts": timeouts,
            "max_retries": 1,
        }
        for name, price, skill in (("small", (0.15, 0.6), 0.5), ("big", (2.5, 10.0), 2.0))
    ]
    return {
        "version": 1,
        "models": models,
        "routes": [
            {"name": "auto", "candidates": ["small", "big"], "quality_bar": 0.7},
            {"name": "cheap", "candidates": ["small"]},
        ],
        "default_route": "auto",
    }


def tenants(n: int, budget_small: float) -> tuple[dict[str, Any], dict[str, str], str]:
    keys = {f"tenant-{i}": new_key() for i in range(n)}
    admin = new_key()
    spec = []
    for i, (name, key) in enumerate(keys.items()):
        spec.append(
            {
                "name": name,
                "keys_sha256": [digest(key)],
                # the last tenant's budget runs out mid-soak; the others' never do
                "budget": {"usd_per_day": budget_small if i == n - 1 else 50.0},
                "limits": {"rpm": 100_000, "max_tokens": 32},
            }
        )
    return {"version": 1, "tenants": spec, "admin_keys_sha256": [digest(admin)]}, keys, admin


class Redis:
    """A ``redis-server`` with AOF persistence (as deployments run it) on a fixed port."""

    def __init__(self, root: Path) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise SystemExit("soak: redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.binary is not None
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
            + ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def classify(status: int, body: bytes, stream: bool, upstream: bool = False) -> str:
    if upstream:
        return f"{status} upstream's own"  # an upstream 4xx/5xx, passed through as it came
    if status == 200:
        if stream and (b'"error"' in body.rsplit(b"data:", 1)[-1] or b"[DONE]" not in body):
            return "200 stream_error"
        return "200 ok"
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = "?"
    return f"{status} {code}"


async def drive(args: argparse.Namespace, url: str, keys: dict[str, str], soak: Soak,
                on_half: Any) -> None:  # fmt: skip
    rng = random.Random(args.seed)
    limits = httpx.Limits(max_connections=args.max_in_flight, max_keepalive_connections=64)
    in_flight: set[asyncio.Task[None]] = set()
    t0 = time.monotonic()
    names = list(keys)

    async def one(client: httpx.AsyncClient, started: float) -> None:
        tenant = rng.choice(names)
        stream = rng.random() < args.stream_share
        text = f"soak request {rng.randrange(10**6)}: summarise the quarterly numbers"
        fault = None
        if rng.random() < args.fault_share:
            fault = rng.choice(FAULTS)
            text += " " + fault[1]
        body = {
            "model": rng.choice(("auto", "auto", "cheap")),
            "messages": [{"role": "user", "content": text}],
            "max_tokens": 16,
            "stream": stream,
        }
        headers = {"authorization": f"Bearer {keys[tenant]}"}
        t = time.monotonic()
        try:
            async with asyncio.timeout(DEADLINE_S):
                async with client.stream(
                    "POST", url + "/v1/chat/completions", json=body, headers=headers
                ) as r:
                    data = await r.aread()
            cause = classify(r.status_code, data, stream, "x-effgate-upstream" in r.headers)
            status = r.status_code
        except TimeoutError:
            status, cause = 0, "client_deadline"
        except httpx.HTTPError as exc:
            status, cause = 0, f"transport {type(exc).__name__}"
        soak.results.append(Result(started, time.monotonic() - t, status, cause, tenant, stream))

    half_done = False
    async with httpx.AsyncClient(limits=limits, timeout=DEADLINE_S + 5) as client:
        next_at = 0.0
        while (now := time.monotonic() - t0) < args.duration:
            if not half_done and now >= args.duration * args.redis_restart_at:
                half_done = True
                on_half(now)
            if now >= next_at:
                if len(in_flight) < args.max_in_flight:
                    task = asyncio.create_task(one(client, now))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                next_at += rng.expovariate(args.rate)
                continue
            await asyncio.sleep(min(0.01, next_at - now))
        if in_flight:
            await asyncio.wait(in_flight, timeout=DEADLINE_S + 5)


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def count_records(records: Path) -> Counter[str]:
    out: Counter[str] = Counter()
    for path in records.glob("*.jsonl*"):
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                out[str(rec.get("type"))] += 1
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="effgate-soak-"))
    soak = Soak()
    redis = Redis(root)
    redis.start()
    procs: list[Proc] = []
    try:
        fake_port = free_port()
        fake = spawn(
            "fake",
            [sys.executable, "-m", "fake_upstream", "--port", str(fake_port)]
            + ["--models", "mock-small,mock-big", "--latency-ms", str(args.latency_ms)],
            cpus=None,
            log_dir=root,
        )
        procs.append(fake)
        fake.wait_port(20)
        (root / "policy.yaml").write_text(
            yaml.safe_dump(policy(f"http://127.0.0.1:{fake_port}/v1"))
        )
        spec, keys, admin = tenants(args.tenants, args.small_budget)
        (root / "tenants.yaml").write_text(yaml.safe_dump(spec))
        port = free_port()
        gateway = spawn(
            "gateway",
            [sys.executable, "-m", "gateway.cli", "serve", "--policy", str(root / "policy.yaml")]
            + ["--host", "127.0.0.1", "--port", str(port)],
            cpus=None,
            log_dir=root,
            env={
                "EFFGATE_REDIS_URL": redis.url,
                "EFFGATE_TENANTS_PATH": str(root / "tenants.yaml"),
                "EFFGATE_RECORDS_DIR": str(root / "records"),
                "EFFGATE_LOG_LEVEL": "warning",
            },
        )
        procs.append(gateway)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            gateway.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("gateway did not become ready")
            time.sleep(0.1)
        t_start = time.monotonic()
        soak.rss.append((0.0, status_kb(gateway.pid, "VmRSS")))
        stop_sampling = False

        async def sample() -> None:
            while not stop_sampling:
                await asyncio.sleep(1.0)
                soak.rss.append((time.monotonic() - t_start, status_kb(gateway.pid, "VmRSS")))

        def restart_redis(now: float) -> None:
            if args.redis_restart_at >= 1:
                return
            redis.kill()
            soak.events.append((now, "redis killed"))

            async def later() -> None:
                await asyncio.sleep(3.0)
                redis.start()
                soak.events.append((time.monotonic() - t_start, "redis started"))

            asyncio.get_running_loop().create_task(later())

        async def main() -> None:
            nonlocal stop_sampling
            sampler = asyncio.create_task(sample())
            await drive(args, url, keys, soak, restart_redis)
            stop_sampling = True
            await sampler

        asyncio.run(main())
        elapsed = time.monotonic() - t_start
        time.sleep(1.0)  # settles and reconciles land
        usage = httpx.get(
            url + "/v1/admin/tenants", headers={"authorization": f"Bearer {admin}"}, timeout=10
        ).json()["data"]
        metrics_text = httpx.get(url + "/metrics", timeout=10).text
        gateway.popen.send_signal(signal.SIGTERM)  # the graceful stop flushes the records
        code = gateway.popen.wait(30)
        records = count_records(root / "records")
    finally:
        for p in procs:
            p.stop()
        redis.kill()
    answered = [r for r in soak.results if r.status != 0]
    causes = Counter(r.cause for r in soak.results)
    latencies = [r.latency_s for r in answered]
    ok = [r.latency_s for r in answered if r.cause == "200 ok"]
    half = [kb for t, kb in soak.rss if t >= elapsed / 2]
    budgets = {
        t["name"]: {
            "budget_usd": t["budget"]["usd_per_day"],
            "spent_usd": t["usage"]["usd_day"]["spent"],
            "held_usd": t["usage"]["usd_day"]["held"],
        }
        for t in usage
    }
    slope = 0.0
    if len(half) >= 2:
        pts = [(t, kb) for t, kb in soak.rss if t >= elapsed / 2]
        n = len(pts)
        mt = sum(t for t, _ in pts) / n
        mk = sum(k for _, k in pts) / n
        var = sum((t - mt) ** 2 for t, _ in pts) or 1.0
        slope = sum((t - mt) * (k - mk) for t, k in pts) / var * 60 / 1024  # MB per minute
    reconciled = next(
        (
            float(line.split()[-1])
            for line in metrics_text.splitlines()
            if line.startswith("effgate_limits_reconciled_usd_total ")
        ),
        0.0,
    )
    out: dict[str, Any] = {
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "elapsed_s": round(elapsed, 2),
        "sent": len(soak.results),
        "answered": len(answered),
        "throughput_rps": round(len(answered) / elapsed, 2),
        "causes": dict(causes.most_common()),
        "latency_ms": {
            "p50": round(percentile(latencies, 0.5) * 1000, 2),
            "p99": round(percentile(latencies, 0.99) * 1000, 2),
            "max": round(max(latencies, default=0.0) * 1000, 2),
        },
        # the requests answered 200 without an error (faulted ones that fell back included):
        # what a client sees apart from the injected hangs and their deadlines
        "latency_ms_ok": {
            "p50": round(percentile(ok, 0.5) * 1000, 2),
            "p99": round(percentile(ok, 0.99) * 1000, 2),
        },
        "rss_mb": {
            "start": round(soak.rss[0][1] / 1024, 1),
            "max": round(max(kb for _, kb in soak.rss) / 1024, 1),
            "end": round(soak.rss[-1][1] / 1024, 1),
            "slope_second_half_mb_per_min": round(slope, 2),
            "series": [(round(t, 1), round(kb / 1024, 1)) for t, kb in soak.rss],
        },
        "budgets": budgets,
        "reconciled_usd": reconciled,
        "records": {"request": records.get("request", 0), "answered": len(answered)},
        "events": soak.events,
        "gateway_exit_code": code,
    }
    problems = []
    for name, b in budgets.items():
        if b["spent_usd"] > b["budget_usd"] + 1e-12:
            problems.append(f"{name} spent {b['spent_usd']} of a {b['budget_usd']} budget")
    if out["records"]["request"] != len(answered):
        problems.append(f"{records.get('request', 0)} request records for {len(answered)} answers")
    if causes.get("client_deadline"):
        problems.append(f"{causes['client_deadline']} requests past the {DEADLINE_S:g} s deadline")
    if code != 0:
        problems.append(f"the gateway exited with {code} on SIGTERM")
    out["problems"] = problems
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.soak", description=__doc__.split("\n")[0]
    )
    p.add_argument("--rate", type=float, default=40.0, help="requests per second (open loop)")
    p.add_argument("--duration", type=float, default=120.0, help="seconds")
    p.add_argument("--tenants", type=int, default=3)
    p.add_argument("--stream-share", type=float, default=0.3)
    p.add_argument("--fault-share", type=float, default=0.05)
    p.add_argument(
        "--redis-restart-at", type=float, default=0.5, help="share of the run; 1 = never"
    )
    p.add_argument("--small-budget", type=float, default=2e-4, help="the last tenant's USD/day")
    p.add_argument("--latency-ms", type=float, default=5.0, help="the fake upstream's")
    p.add_argument("--max-in-flight", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the result here")
    args = p.parse_args(argv)
    out = run(args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    series = out["rss_mb"].pop("series")
    print(json.dumps({k: v for k, v in out.items() if k != "config"}, indent=2))
    print(
        f"rss (MB) every ~{max(1, len(series) // 10)} s:",
        [kb for _, kb in series[:: max(1, len(series) // 10)]],
    )
    for problem in out["problems"]:
        print("PROBLEM:", problem, file=sys.stderr)
    return 1 if out["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
