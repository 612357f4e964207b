"""What routing adds to a request, this checkout against another, in the same run, as ratios.

    python -m benchmarks.routing_ab --base REV [--adapt FILE] [--k 2000] [--n 5000] [--block 100]
        [--data FILE ...] [--system-prompts FILE]
    python -m benchmarks.routing_ab --base-path DIR ...

`benchmarks.routing` times one checkout; on a shared VM its figures drift by tens of percent
from minute to minute, so two runs of it, one per commit, cannot show a change of a few
percent. Here two worker processes time the same steps (the prompt text, the gateway's
``EstimatorStore.score``, the prompt-token estimate, ``decide()`` over every candidate of the
route, as `benchmarks.routing` does), one on this working tree and one on ``--base`` (a git
revision, checked out in a temporary worktree, or an existing checkout), on the same real
prompts, the same artifact and the same policy. They take turns: block after block of
requests, each block timed by both, the order alternating, one process running at a time, so
both see the same machine. Reported per side: wall and thread-CPU percentiles on typical
requests (300 to 2,000 characters of user prompt) and on all, the ratios this / base, and
how many requests were routed differently (0 for a change that keeps what routing decides;
the difficulty and every P are compared too).

``--adapt FILE`` routes over heads fitted on ``--k`` rows of FILE (as ``benchmarks.routing
--adapt`` fits them, with this checkout's code, once for both sides); without it, the shipped
artifact and ``policies/default.yaml`` of this checkout, for both. The base must be able to
read the artifact.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WARM = 200


# ------------------------------------------------------------------------------ worker


def timed_route(
    policy: Any,
    route: str,
    messages: list[dict[str, Any]],
    scoring: Any,
    tokens: Any,
    smallest: int,
    health: Any,
) -> tuple[tuple[float, float, float, float, float, float], Any, float, Any]:
    """The steps the gateway runs to route one request (prompt text, scoring, the prompt-token
    estimate, decide()), timed: ((cpu, wall) at the start, after scoring, after decide(),
    the decision, the difficulty, P by catalog id or None). `benchmarks.routing` times the
    same function; here it runs against whichever checkout the worker imports."""
    from policies.engine import RouteInput, decide
    from router_models.features import prompt_text

    c0, t0 = time.thread_time(), time.perf_counter()
    text = prompt_text(messages)
    difficulty, p, _ = scoring.score(policy, route, messages)
    c1, t1 = time.thread_time(), time.perf_counter()
    inp = RouteInput(
        model=route,
        difficulty=difficulty,
        p=p,
        prompt_text=text,
        prompt_tokens=tokens.estimate_prompt(text, messages, smallest),
    )
    decision = decide(policy, inp, health)
    c2, t2 = time.thread_time(), time.perf_counter()
    return (c0, t0, c1, t1, c2, t2), decision, difficulty, p


def _worker(artifact: str, policy: str, route: str, requests_path: str, cpu: str) -> int:
    """One side: load everything, warm up, then time the blocks asked for on stdin (one JSON
    line each; an empty line ends). Imports only what both checkouts have."""
    if int(cpu) >= 0:
        os.sched_setaffinity(0, {int(cpu)})
    from gateway.health import Health
    from gateway.scoring import EstimatorStore
    from gateway.tokens import TokenCounter
    from policies.store import PolicyStore
    from router_models import load_estimator

    # an installed copy would shadow a checkout that lacks a package: time only the checkout
    checkout = Path.cwd().resolve()
    for module in ("gateway", "policies", "router_models"):
        where = Path(str(sys.modules[module].__file__)).resolve()
        if not where.is_relative_to(checkout):
            print(f"{module} was imported from {where}, not from {checkout}", file=sys.stderr)
            return 2
    est = load_estimator(Path(artifact) if artifact else None)
    store = PolicyStore(Path(policy), skills=est.skills, discrimination=est.discrimination)
    pol = store.current
    scoring = EstimatorStore(est, policies=store)
    health = Health()
    tokens = TokenCounter.load()
    smallest = min(m.context_window for m in pol.models.values())
    requests = json.loads(Path(requests_path).read_text(encoding="utf-8"))

    def once(messages: list[dict[str, Any]]) -> tuple[float, float, str, float, list[float]]:
        stamps, decision, difficulty, p = timed_route(
            pol, route, messages, scoring, tokens, smallest, health
        )
        c0, t0, _, _, c2, t2 = stamps
        ps = [] if p is None else [p[k] for k in sorted(p)]
        return t2 - t0, c2 - c0, decision.model, difficulty, ps

    try:
        from gateway.cli.serve import tune_gc  # as `effgate serve` sets the collector

        tune_gc()
    except ImportError:
        pass
    for messages in requests[:WARM]:
        once(messages)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        lo, hi = json.loads(line)
        out: dict[str, list[Any]] = {"wall": [], "cpu": [], "model": [], "d": [], "p": []}
        for messages in requests[WARM + lo : WARM + hi]:
            w, c, model, d, ps = once(messages)
            for key, value in (("wall", w), ("cpu", c), ("model", model), ("d", d), ("p", ps)):
                out[key].append(value)
        print(json.dumps(out), flush=True)
    return 0


# ------------------------------------------------------------------------- coordinator


class _Side:
    def __init__(self, name: str, checkout: Path, args: list[str]) -> None:
        self.name = name
        env = {**os.environ, "PYTHONPATH": str(checkout), "PYTHONHASHSEED": "0"}
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", *args],
            cwd=checkout,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.timings: dict[str, list[Any]] = {"wall": [], "cpu": [], "model": [], "d": [], "p": []}

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker exited (status {self.proc.wait()})")
        out: dict[str, Any] = json.loads(line)
        return out

    def ready(self) -> None:
        self._read()

    def run(self, lo: int, hi: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps([lo, hi]) + "\n")
        self.proc.stdin.flush()
        got = self._read()
        for key, values in got.items():
            self.timings[key].extend(values)

    def stop(self) -> None:
        """End the worker whatever state it is in (after close, a no-op)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.write("\n")
            self.proc.stdin.close()
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _block(xs: list[float], sel: list[bool]) -> dict[str, float]:
    from benchmarks.routing import _pcts  # the percentiles benchmarks.routing reports

    return _pcts([x for x, s in zip(xs, sel, strict=True) if s])


def compare(news: list[_Side], bases: list[_Side], typical: list[bool]) -> dict[str, Any]:
    """Percentiles of each side's timings pooled over its processes, and whether the first
    process of each routed every request alike."""
    out: dict[str, Any] = {}
    for label, one in (("typical", typical), ("all", [True] * len(typical))):
        sel = one * len(news)
        block: dict[str, Any] = {}
        for kind in ("wall", "cpu"):
            a = _block([x for s in news for x in s.timings[kind]], sel)
            b = _block([x for s in bases for x in s.timings[kind]], sel)
            block[kind] = {
                "this_ms": a,
                "base_ms": b,
                "ratio": {q: round(a[q] / b[q], 3) if b[q] else None for q in a},
            }
        out[label] = block
    new, base = news[0], bases[0]
    models = zip(new.timings["model"], base.timings["model"], strict=True)
    out["routed_differently"] = sum(m != n for m, n in models)
    out["max_abs_difficulty_diff"] = max(
        abs(x - y) for x, y in zip(new.timings["d"], base.timings["d"], strict=True)
    )
    out["max_abs_p_diff"] = max(
        (
            max((abs(x - y) for x, y in zip(p, q, strict=True)), default=0.0)
            if len(p) == len(q)
            else float("inf")
            for p, q in zip(new.timings["p"], base.timings["p"], strict=True)
        ),
        default=0.0,
    )
    return out


def main(argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:
        return _worker(*argv[1:6])
    from benchmarks.labelled_files import add_system_prompts_option, system_prompts_from

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--base", help="a git revision of this repository to compare against")
    where.add_argument("--base-path", type=Path, help="a checkout to compare against")
    parser.add_argument("--adapt", type=Path, help="fit heads on this shared-format file first")
    parser.add_argument("--k", type=int, default=2000, help="rows of --adapt to fit on")
    parser.add_argument("--n", type=int, default=5000, help="requests timed by each side")
    parser.add_argument("--block", type=int, default=100, help="requests per turn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", action="append", type=Path)
    parser.add_argument(
        "--cpu",
        type=int,
        default=min(os.sched_getaffinity(0)),
        help="the CPU both sides run on (default: the first this process may use; -1: any)",
    )
    parser.add_argument(
        "--procs", type=int, default=3, help="worker processes per side (timings pooled)"
    )
    add_system_prompts_option(parser)
    args = parser.parse_args(argv)
    if args.n < 1 or args.block < 1 or args.procs < 1:
        parser.error("--n, --block and --procs must be positive")

    from benchmarks.estimator import DEFAULT_DATA, bucket, chat_requests
    from benchmarks.routing import _adapted

    system = system_prompts_from(parser, args.system_prompts)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        worktree = None
        if args.base is not None:
            worktree = tmp / "base"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.base],
                check=True,
                capture_output=True,
            )
        base_path = worktree if worktree is not None else args.base_path.resolve()
        try:
            if args.adapt is not None:
                policy, route = _adapted(args.adapt, args.k, args.seed, tmp, system)
                artifact = str(tmp / "artifact")
            else:
                policy, route, artifact = ROOT / "policies" / "default.yaml", "auto", ""
            requests = chat_requests(
                args.data or list(DEFAULT_DATA), WARM + args.n, args.seed, system
            )
            req_path = tmp / "requests.json"
            req_path.write_text(json.dumps(requests), encoding="utf-8")
            worker_args = [artifact, str(policy), route, str(req_path), str(args.cpu)]
            if not artifact:  # the same shipped artifact for both: this checkout's
                from router_models.artifact import default_artifact_dir

                worker_args[0] = str(default_artifact_dir())
            sides: list[_Side] = []
            try:
                for _ in range(args.procs):
                    sides.append(_Side("this", ROOT, worker_args))
                    sides.append(_Side("base", base_path, worker_args))
                for side in sides:
                    side.ready()
                for turn, lo in enumerate(range(0, args.n, args.block)):
                    hi = min(args.n, lo + args.block)
                    for side in sides if turn % 2 == 0 else sides[::-1]:
                        side.run(lo, hi)
                for side in sides:
                    side.close()
            except RuntimeError as exc:  # a worker could not load or time (its stderr says why)
                print(f"routing_ab: {exc}", file=sys.stderr)
                return 1
            finally:
                for side in sides:
                    side.stop()
        finally:
            if worktree is not None:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)],
                    check=False,
                    capture_output=True,
                )
    typical = [bucket(len(m[1]["content"])) == "typical" for m in requests[WARM : WARM + args.n]]
    result = {
        "base": args.base or str(args.base_path),
        "route": route,
        "adapt": str(args.adapt or ""),
        "requests": args.n,
        "typical_requests": sum(typical),
        "block": args.block,
        "processes_per_side": args.procs,
        **compare(sides[0::2], sides[1::2], typical),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
