"""What routing adds to a request: the estimator plus decide(), on a real policy.

    python -m benchmarks.routing [--policy FILE] [--route NAME] [--n 5000] [--data FILE ...]
    python -m benchmarks.routing --adapt /work/shared/data/llmrouter_train.jsonl [--k 2000]
        [--system-prompts benchmarks/system_prompts/llmrouter_train_boilerplate.json]

Each request is a real prompt from the shared data (a system prompt plus the user turn, as
in benchmarks/estimator.py). Per request, the same steps the gateway's route_input and
make_decision run for a routed request: the prompt text, the scoring (the gateway's
``EstimatorStore.score``: the difficulty and, with learned heads, P for each candidate),
the prompt-token estimate and decide() over every candidate of the route (eligibility, P,
expected cost, ordering). ``--adapt FILE`` first fits learned heads on K random rows of
FILE over the shipped artifact (as ``effgate train --data FILE --base`` does, without the
gate) and routes over a policy of 8 of that file's models, all with heads. Reported per
stage, wall and this thread's CPU time (on a loaded machine wall-time tails are mostly
scheduler waits), and the total per prompt-length bucket of benchmarks/estimator.py (short
< 300, typical 300 to 2,000, long > 2,000 characters of user prompt). Budget: estimator for
8 candidates + decide() p99 <= 0.5 ms on a typical request (wall time). The garbage
collector is set as `effgate serve` sets it (`gateway.cli.serve.tune_gc`).
``--system-prompts FILE`` sends each request (and each ``--adapt`` row) with its task's
system prompt from FILE instead of the one-line default: traffic whose workflows carry a
preamble of their own (the length buckets still read the user prompt).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from benchmarks.estimator import DEFAULT_DATA, bucket, chat_requests
from benchmarks.labelled_files import add_system_prompts_option, system_prompts_from
from benchmarks.routing_ab import timed_route

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
    parser.add_argument("--adapt", type=Path, help="fit heads on this shared-format file first")
    parser.add_argument("--k", type=int, default=2000, help="rows of --adapt to fit on")
    add_system_prompts_option(parser)
    args = parser.parse_args(argv)
    system = system_prompts_from(parser, args.system_prompts)

    from gateway.health import Health
    from gateway.scoring import EstimatorStore
    from gateway.tokens import TokenCounter
    from policies.errors import PolicyLoadError
    from policies.store import PolicyStore
    from router_models import load_estimator

    with tempfile.TemporaryDirectory() as tmp:
        if args.adapt is not None:
            args.policy, args.route = _adapted(args.adapt, args.k, args.seed, Path(tmp), system)
            est = load_estimator(Path(tmp) / "artifact")
        else:
            est = load_estimator()
        try:
            store = PolicyStore(args.policy, skills=est.skills, discrimination=est.discrimination)
        except PolicyLoadError as exc:
            print(f"routing: {exc}", file=sys.stderr)
            return 2
    policy = store.current
    scoring = EstimatorStore(est, policies=store)
    if args.route not in policy.routes:
        print(f"routing: {args.policy} has no route {args.route!r}", file=sys.stderr)
        return 2
    health = Health()
    tokens = TokenCounter.load()
    smallest = min(m.context_window for m in policy.models.values())
    requests = chat_requests(args.data or list(DEFAULT_DATA), args.n, args.seed, system)

    wall: dict[str, list[float]] = {"estimator": [], "decide": [], "total": []}
    cpu: dict[str, list[float]] = {k: [] for k in wall}
    # total per prompt-length bucket (benchmarks/estimator.py's): the budget is for a
    # typical request
    by_bucket: dict[str, dict[str, list[float]]] = {"wall": {}, "cpu": {}}
    chosen: dict[str, int] = {}
    warm = requests[:200]
    with _as_served() as thresholds:
        for i, messages in enumerate(warm + requests):
            stamps, decision, _, _ = timed_route(
                policy, args.route, messages, scoring, tokens, smallest, health
            )
            c0, t0, c1, t1, c2, t2 = stamps
            if i < len(warm):
                continue
            for key, w, c in (
                ("estimator", t1 - t0, c1 - c0),
                ("decide", t2 - t1, c2 - c1),
                ("total", t2 - t0, c2 - c0),
            ):
                wall[key].append(w)
                cpu[key].append(c)
            size = bucket(len(messages[1]["content"]))  # the user prompt, as estimator.py
            by_bucket["wall"].setdefault(size, []).append(t2 - t0)
            by_bucket["cpu"].setdefault(size, []).append(c2 - c0)
            chosen[decision.model] = chosen.get(decision.model, 0) + 1

    typical = by_bucket["wall"].get("typical") or wall["total"]
    total_p99 = _pcts(typical)["p99"]
    result = {
        "policy": str(args.policy),
        "route": args.route,
        "candidates": len(policy.routes[args.route].entries),
        "learned_heads": 0 if est.heads is None else len(est.heads.models),
        "requests": len(wall["total"]),
        "wall_ms": {k: _pcts(v) for k, v in wall.items()},
        "cpu_ms": {k: _pcts(v) for k, v in cpu.items()},
        "total_by_prompt_chars": {
            kind: {b: {"n": len(v), **_pcts(v)} for b, v in sorted(per.items())}
            for kind, per in by_bucket.items()
        },
        "budget_p99_ms": BUDGET_MS,
        "typical_total_p99_within_budget": total_p99 <= BUDGET_MS,
        "chosen": dict(sorted(chosen.items(), key=lambda kv: -kv[1])),
        "gc_thresholds": list(thresholds),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        # the traffic timed: the mean length of the requests' system prompts
        "system_prompt_chars": round(sum(len(m[0]["content"]) for m in requests) / len(requests)),
    }
    print(json.dumps(result, indent=1))
    return 0


@contextlib.contextmanager
def _as_served() -> Iterator[tuple[int, int, int]]:
    """The garbage collector as `effgate serve` sets it at start-up (what start-up built
    frozen, the young generation collected less often: Python's defaults add full-collection
    stalls the gateway does not have), for the timed loop only: the setting is process-wide,
    so the caller's is restored after (and everything frozen unfrozen)."""
    from gateway.cli.serve import tune_gc

    before = gc.get_threshold()
    tune_gc()
    try:
        yield gc.get_threshold()
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def _adapted(
    data: Path, k: int, seed: int, tmp: Path, system_prompts: Mapping[str, str] | None = None
) -> tuple[Path, str]:
    """Heads fitted on ``k`` random rows of ``data`` over the shipped artifact (each sent with
    its task's system prompt from ``system_prompts``, where given), saved under
    ``tmp/artifact``, and a policy routing over 8 of the file's priced models."""
    import random

    import numpy as np

    from router_models import load_estimator
    from router_models.artifact import save_artifact
    from router_models.data import load_dataset
    from router_models.learner import examples_from_rows, fit_heads, prior_from_estimator

    base = load_estimator()
    dataset = load_dataset([data])
    rows = list(dataset.rows)
    if system_prompts:
        from benchmarks.labelled_files import with_system_prompts

        rows = list(with_system_prompts(rows, system_prompts))
    random.Random(seed).shuffle(rows)
    examples = examples_from_rows(rows[:k])
    d = np.array([base.difficulty_of_dense(e.sig.dense) for e in examples])
    heads = fit_heads(examples, d, prior_from_estimator(base.skills, base.discrimination, d))
    priced = [
        m
        for m in heads.models
        if (pr := dataset.prices.get(m)) is not None and pr.input_usd_per_mtok is not None
    ][:8]
    skills = {**base.skills, **{m: base.skills.get(m, 0.0) for m in heads.models}}
    save_artifact(
        tmp / "artifact", base.weights, skills=skills, discrimination=base.discrimination,
        metadata={"benchmark": "routing --adapt"}, heads=heads,
    )  # fmt: skip
    lines = ["version: 1", "models:"]
    for i, m in enumerate(priced):
        pr = dataset.prices[m]
        lines.append(
            f"  - {{id: m{i}, provider: openai, base_url: 'http://127.0.0.1:9/v1', "
            f"upstream_model: {m!r}, input_usd_per_mtok: {pr.input_usd_per_mtok}, "
            f"output_usd_per_mtok: {pr.output_usd_per_mtok}, context_window: 128000}}"
        )
    names = ", ".join(f"m{i}" for i in range(len(priced)))
    lines += ["routes:", f"  - {{name: learned, candidates: [{names}], quality_bar: 0.7}}"]
    lines.append("default_route: learned")
    policy = tmp / "policy.yaml"
    policy.write_text("\n".join(lines) + "\n")
    return policy, "learned"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
