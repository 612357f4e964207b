"""What routing adds to a request: the estimator plus decide(), on a real policy.

    python -m benchmarks.routing [--policy FILE] [--route NAME] [--n 5000] [--data FILE ...]

Each request is a real prompt from the shared data (a system prompt plus the user turn, as
in benchmarks/estimator.py). Per request, the same steps the gateway's route_input and
make_decision run for a routed request: the prompt text, the difficulty, the prompt-token
estimate and decide() over every candidate of the route (eligibility, P, expected cost,
ordering). Reported per stage, wall and this thread's CPU time (on a loaded machine
wall-time tails are mostly scheduler waits). Budget (issue 4): estimator + decide() p99
<= 0.5 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from benchmarks.estimator import DEFAULT_DATA, chat_requests

BUDGET_MS = 0.5


def _pcts(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)

    def pct(q: float) -> float:
        return round(xs[min(len(xs) - 1, int(q * len(xs)))] * 1e3, 4)

    return {"p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "max": pct(1.0)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--policy", type=Path, default=Path("policies/default.yaml"))
    parser.add_argument("--route", default="auto")
    parser.add_argument("--data", action="append", type=Path)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from gateway.health import Health
    from gateway.tokens import TokenCounter
    from policies.engine import RouteInput, decide
    from policies.loader import load_policy
    from router_models import load_estimator
    from router_models.features import prompt_text

    est = load_estimator()
    policy = load_policy(args.policy, skills=est.skills, discrimination=est.discrimination)
    if args.route not in policy.routes:
        print(f"routing: {args.policy} has no route {args.route!r}", file=sys.stderr)
        return 2
    health = Health()
    tokens = TokenCounter.load()
    smallest = min(m.context_window for m in policy.models.values())
    requests = chat_requests(args.data or list(DEFAULT_DATA), args.n, args.seed)

    wall: dict[str, list[float]] = {"estimator": [], "decide": [], "total": []}
    cpu: dict[str, list[float]] = {k: [] for k in wall}
    chosen: dict[str, int] = {}
    warm = requests[:200]
    for i, messages in enumerate(warm + requests):
        c0, t0 = time.thread_time(), time.perf_counter()
        text = prompt_text(messages)
        difficulty = est.difficulty(messages)
        c1, t1 = time.thread_time(), time.perf_counter()
        inp = RouteInput(
            model=args.route,
            difficulty=difficulty,
            prompt_text=text,
            prompt_tokens=tokens.estimate_prompt(text, messages, smallest),
        )
        decision = decide(policy, inp, health)
        c2, t2 = time.thread_time(), time.perf_counter()
        if i < len(warm):
            continue
        for key, w, c in (
            ("estimator", t1 - t0, c1 - c0),
            ("decide", t2 - t1, c2 - c1),
            ("total", t2 - t0, c2 - c0),
        ):
            wall[key].append(w)
            cpu[key].append(c)
        chosen[decision.model] = chosen.get(decision.model, 0) + 1

    total_p99 = _pcts(wall["total"])["p99"]
    result = {
        "policy": str(args.policy),
        "route": args.route,
        "candidates": len(policy.routes[args.route].entries),
        "requests": len(wall["total"]),
        "wall_ms": {k: _pcts(v) for k, v in wall.items()},
        "cpu_ms": {k: _pcts(v) for k, v in cpu.items()},
        "budget_p99_ms": BUDGET_MS,
        "total_p99_within_budget": total_p99 <= BUDGET_MS,
        "chosen": dict(sorted(chosen.items(), key=lambda kv: -kv[1])),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
