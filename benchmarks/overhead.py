"""What the gateway adds: latency, time to first token, throughput, memory and start-up time.

    python -m benchmarks.overhead [--requests N] [--max-seconds S] [--concurrency 1,16]
        [--saturation 64] [--duration S] [--rounds 3] [--skip-stream] [--skip-routed]
        [--peer litellm] [--cores 1:0 | off] [--estimator DIR] [--json OUT] [--profile OUT]

In one run it starts two fake upstreams (``fast`` for JSON, ``paced`` for streams), the gateway
(``effgate serve`` with a generated policy) and, with ``--peer litellm``, the LiteLLM proxy, and
sends the same requests to the fake directly, through the gateway and through the peer, taking
turns (see ``benchmarks.runner``). With ``--cores S:C`` (default ``1:0``) the gateway and the
peer run on CPUs S and the fakes and this load generator on CPUs C. A markdown report goes to
stdout, progress to stderr, and ``--json`` writes every number.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from benchmarks import peer_litellm
from benchmarks.checks import calibrate, checks, machine
from benchmarks.loadgen import build_request, first_success
from benchmarks.procs import Pinning, Proc, free_port, parse_cores, pinned_self, pinning_available
from benchmarks.procs import spawn as spawn_proc
from benchmarks.report import (
    Check,
    Tables,
    checks_table,
    latency_table,
    saturation_table,
    stream_table,
)
from benchmarks.runner import HOST, PATH, Budget, measure
from benchmarks.scenarios import Scenario, Target, litellm_config, policy_yaml, scenarios
from benchmarks.standin import default_estimator_error, write_standin


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.overhead",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--requests",
        type=int,
        default=2000,
        help="JSON requests per target and concurrency, over all rounds (default 2000)",
    )
    p.add_argument(
        "--stream-requests",
        type=int,
        default=300,
        help="streams per target and concurrency (default 300)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=6.0,
        help="seconds per target of each saturation run, over all rounds (default 6)",
    )
    p.add_argument("--concurrency", default="1,16", help="latency runs (default 1,16)")
    p.add_argument(
        "--saturation",
        type=int,
        default=64,
        help="closed-loop concurrency of the throughput runs; 0 skips them (default 64)",
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=20.0,
        help="time cap per target of each latency run, over all rounds; a slow target then "
        "sends fewer than --requests (the n column says how many) (default 20)",
    )
    p.add_argument("--warmup", type=int, default=50, help="discarded requests per target")
    p.add_argument("--skip-stream", action="store_true")
    p.add_argument("--skip-routed", action="store_true")
    p.add_argument("--peer", choices=["litellm"], action="append", default=[])
    p.add_argument("--cores", default="1:0", help="SERVER:CLIENT cpu lists, or off")
    p.add_argument("--estimator", type=Path, help="estimator artifact (default: the shipped one)")
    p.add_argument("--stream-tokens-per-s", type=float, default=500.0)
    p.add_argument("--reply-words", type=int, default=16)
    p.add_argument("--json", type=Path, dest="json_out")
    p.add_argument("--profile", type=Path, help="run the gateway under cProfile, write here")
    p.add_argument("--keep", type=Path, help="keep logs and the policy in this directory")
    return p


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Bench:
    """The processes of one run and the numbers measured about them."""

    def __init__(self, args: argparse.Namespace, pin: Pinning | None, work: Path) -> None:
        self.args = args
        self.pin = pin
        self.work = work
        self.procs: list[Proc] = []
        self.servers: dict[Target, tuple[int, int]] = {}  # target -> (port, pid)
        self.fast = self.paced = (0, 0)
        self.process: dict[str, dict[str, Any]] = {}
        self.estimator: dict[str, Any] = {}
        self.tables = Tables()
        # both the gateway and the peer check a bearer key, as they would in production
        self.api_key = "sk-bench-" + secrets.token_hex(24)

    def spawn(self, name: str, argv: list[str], server: bool, **kw: Any) -> Proc:
        cpus = None if self.pin is None else (self.pin.server if server else self.pin.client)
        proc = spawn_proc(name, argv, cpus=cpus, log_dir=self.work, **kw)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def start_fakes(self) -> None:
        a = self.args
        # NOTE: through the CLI, so a broad `pkill -f fake_upstream` elsewhere on a shared
        # machine does not take our fakes down mid-run
        fake = [
            sys.executable,
            "-m",
            "gateway.cli",
            "fake-upstream",
            "--port",
            "0",
            "--models",
            "mock-small,mock-large",
            "--reply-words",
            str(a.reply_words),
        ]
        fast = self.spawn("fake-fast", fake, server=False)
        paced = self.spawn(
            "fake-paced", [*fake, "--tokens-per-s", str(a.stream_tokens_per_s)], server=False
        )
        self.fast = (fast.wait_port(60), fast.pid)
        self.paced = (paced.wait_port(60), paced.pid)

    def estimator_env(self) -> dict[str, str]:
        if self.args.estimator is not None:
            self.estimator = {"artifact": str(self.args.estimator), "standin": False}
            return {"EFFGATE_ESTIMATOR_PATH": str(self.args.estimator)}
        error = default_estimator_error()
        if error is None:
            self.estimator = {"artifact": "default", "standin": False}
            return {}
        _log(
            f"router_models.load_estimator() failed: {error}\n"
            "  using a stand-in trained on synthetic data (benchmarks/standin.py)"
        )
        path = write_standin(self.work / "standin-estimator")
        self.estimator = {"artifact": str(path), "standin": True, "default_error": error}
        return {"EFFGATE_ESTIMATOR_PATH": str(path)}

    async def start_gateway(self) -> None:
        policy = self.work / "policy.yaml"
        policy.write_text(policy_yaml(self.fast[0], self.paced[0]))
        env = {
            "EFFGATE_RECORDS_DIR": str(self.work / "records"),
            "EFFGATE_API_KEYS": json.dumps({self.api_key: "bench"}),
            **self.estimator_env(),
        }
        port = free_port()
        serve = ["-m", "gateway.cli", "serve"]
        if self.args.profile is not None:
            serve = ["-m", "benchmarks.profile_gateway", str(self.args.profile.resolve())]
        argv = [sys.executable, *serve, "--policy", str(policy), "--port", str(port)]
        proc = self.spawn("gateway", argv, server=True, env=env)
        await self._first_served("gateway", proc, port, Scenario("json", "passthrough"), 60)
        self.servers["gateway"] = (port, proc.pid)

    async def start_litellm(self) -> None:
        exe = peer_litellm.ensure_venv(log=self.work / "litellm-install.log")
        config = self.work / "litellm.yaml"
        config.write_text(litellm_config(self.fast[0], self.paced[0]))
        port = free_port()
        proc = self.spawn(
            "litellm",
            peer_litellm.command(exe, config, port),
            server=True,
            env={**peer_litellm.ENV, "LITELLM_MASTER_KEY": self.api_key},
            cwd=self.work,
        )
        await self._first_served("litellm", proc, port, Scenario("json", "passthrough"), 300)
        self.process["litellm"]["version"] = peer_litellm.version()
        self.servers["litellm"] = (port, proc.pid)

    async def _first_served(
        self, target: Target, proc: Proc, port: int, scenario: Scenario, timeout_s: float
    ) -> None:
        request = build_request(HOST, port, PATH, scenario.body(target), self.api_key)
        task = asyncio.ensure_future(first_success(HOST, port, request, timeout_s=timeout_s))
        while not task.done():
            await asyncio.sleep(0.05)
            if proc.popen.poll() is not None:
                task.cancel()
                proc.check_alive()
        served = task.result()
        await asyncio.sleep(1.0)  # let start-up work settle before reading idle memory
        self.process[target] = {
            "start_to_first_served_s": served - proc.started,
            "idle_rss_mb": proc.status_kb("VmRSS") / 1024,
        }
        _log(
            f"{target}: first request served {served - proc.started:.2f} s after start, "
            f"idle RSS {self.process[target]['idle_rss_mb']:.1f} MB"
        )

    async def run_all(self) -> None:
        a = self.args
        conc = [int(c) for c in a.concurrency.split(",") if c.strip()]
        for sc in scenarios(stream=not a.skip_stream, routed=not a.skip_routed):
            servers = {"direct": self.paced if sc.stream else self.fast, **self.servers}
            n = a.stream_requests if sc.stream else a.requests
            for c in conc:
                budget = Budget(n, a.max_seconds, rounds=a.rounds, warmup=a.warmup)
                rows = await measure(sc, servers, c, budget, self.api_key)
                (self.tables.stream if sc.stream else self.tables.latency).extend(rows)
        if a.saturation > 0:
            saturated = scenarios(stream=False, routed=not a.skip_routed)
            if not a.skip_stream:
                saturated.append(Scenario("stream", "passthrough", paced=False))
            for sc in saturated:
                servers = {"direct": self.fast, **self.servers}
                budget = Budget(duration_s=a.duration, rounds=a.rounds, warmup=a.warmup)
                self.tables.saturation += await measure(
                    sc, servers, a.saturation, budget, self.api_key
                )
        for proc in self.procs:
            if proc.name in self.process:
                self.process[proc.name]["peak_rss_mb"] = proc.status_kb("VmHWM") / 1024


async def _bench(bench: Bench) -> None:
    bench.start_fakes()
    await bench.start_gateway()
    if "litellm" in bench.args.peer:
        await bench.start_litellm()
    await bench.run_all()


def _markdown(bench: Bench, info: dict[str, Any], checklist: list[Check]) -> str:
    t = bench.tables
    lines = [f"## effgate overhead ({time.strftime('%Y-%m-%d %H:%M')})", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    est = bench.estimator
    lines += [
        f"- estimator: {est.get('artifact')}"
        + (
            f" (STAND-IN: the default artifact did not load: {est.get('default_error')})"
            if est.get("standin")
            else ""
        ),
        "",
    ]
    lines += ["### Targets", "", *checks_table(checklist), ""]
    lines += [
        "### Process",
        "",
        "| target | start to first served s | idle RSS MB | peak RSS MB |",
        "|---|---|---|---|",
    ]
    for name, p in bench.process.items():
        lines.append(
            f"| {name} | {p['start_to_first_served_s']:.2f} | {p['idle_rss_mb']:.1f} | "
            f"{p.get('peak_rss_mb', 0.0):.1f} |"
        )
    lines.append("")
    if t.latency:
        lines += [
            "### Latency, JSON (request written to response read)",
            "",
            *latency_table(t.latency),
            "",
        ]
    if t.stream:
        lines += [
            "### Streaming (TTFT = first SSE event; total = stream end)",
            "",
            *stream_table(t.stream),
            "",
        ]
    if t.saturation:
        lines += [
            "### Saturation throughput (closed loop)",
            "",
            *saturation_table(t.saturation),
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        pin = parse_cores(args.cores)
    except ValueError as exc:
        print(f"overhead: {exc}", file=sys.stderr)
        return 2
    if pin is not None and (why := pinning_available(pin)) is not None:
        _log(f"not pinning: {why}")
        pin = None
    with tempfile.TemporaryDirectory(prefix="effgate-bench-") as tmp:
        work = args.keep.resolve() if args.keep is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        bench = Bench(args, pin, work)
        load_before, speed_before = os.getloadavg()[0], calibrate()
        try:
            with (
                pinned_self(None if pin is None else pin.client),
                asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
            ):
                runner.run(_bench(bench))
        except (RuntimeError, TimeoutError, OSError) as exc:
            _log(f"overhead: {exc}")
            for proc in bench.procs:
                code = proc.popen.poll()
                state = "running" if code is None else f"EXITED with code {code}"
                _log(f"--- {proc.name} ({state}), log tail:\n{proc.tail()}")
            return 1
        finally:
            bench.stop()
        info = machine(pin, (load_before, os.getloadavg()[0]), (speed_before, calibrate()))
        checklist = checks(bench.tables, bench.process)
        print(_markdown(bench, info, checklist))
        if args.json_out is not None:
            doc = {
                "machine": info,
                "settings": {
                    k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                },
                "estimator": bench.estimator,
                "process": bench.process,
                "latency": [r.as_json() for r in bench.tables.latency],
                "stream": [r.as_json() for r in bench.tables.stream],
                "saturation": [r.as_json() for r in bench.tables.saturation],
                "checks": [dataclasses.asdict(c) for c in checklist],
            }
            text = json.dumps(_finite(doc), indent=1, allow_nan=False, default=str)
            args.json_out.write_text(text + "\n")
    return 0


def _finite(obj: Any) -> Any:
    """NaN (a percentile of nothing) becomes null, so the JSON is strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


if __name__ == "__main__":
    sys.exit(main())
