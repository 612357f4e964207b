"""Latency of the difficulty estimator: load time and per-request difficulty() percentiles.

    python benchmarks/estimator.py [--artifact DIR] [--data FILE.jsonl ...] [--n 5000]

Typical requests are real prompts from the shared data files (a system prompt plus the
user turn) when present, else generated ones; percentiles are reported per prompt-length
bucket (short < 300, typical 300 to 2,000, long > 2,000 characters) beside the machine's
load average. Budget: p99 <= 0.3 ms on a typical request, load < 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_DATA = (
    Path("/work/shared/data/mmlu_pro.jsonl"),
    Path("/work/shared/data/llmrouter_train.jsonl"),
)
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


def chat_requests(
    paths: list[Path], n: int, seed: int, system_prompts: Mapping[str, str] | None = None
) -> list[list[dict[str, Any]]]:
    """n chat requests (a system message and a real prompt from `paths`, else generated ones).
    ``system_prompts`` (task -> text, "*" for any other task with "{task}" filled in, as
    `benchmarks.labelled_files.load_system_prompts` reads them): a row's task's system
    prompt instead of the one-line default, where it has one."""
    prompts: list[tuple[str, str]] = []
    for path in paths:
        if path.is_file():
            with path.open(encoding="utf-8") as fh:
                rows = [json.loads(line) for line in fh if line.strip()]
            prompts += [(r["prompt"], r.get("task") or "") for r in rows]
    rng = random.Random(seed)
    if not prompts:
        words = [
            "the",
            "model",
            "should",
            "compute",
            "explain",
            "which",
            "value",
            "42",
            "code",
            "list",
        ]
        prompts = [(" ".join(rng.choices(words, k=rng.randint(5, 120))), "") for _ in range(500)]
    if system_prompts:
        from benchmarks.labelled_files import system_prompt_for
    out = []
    for _ in range(n):
        prompt, task = rng.choice(prompts)
        text = system_prompt_for(task, system_prompts) if system_prompts else None
        system = {"role": "system", "content": text} if text else SYSTEM
        out.append([system, {"role": "user", "content": prompt}])
    return out


def bucket(chars: int) -> str:
    return "short" if chars < 300 else "typical" if chars <= 2000 else "long"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifact", type=Path)
    parser.add_argument("--data", action="append", type=Path)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    from router_models import load_estimator

    est = load_estimator(args.artifact)
    load_s = time.perf_counter() - start
    requests = chat_requests(args.data or list(DEFAULT_DATA), args.n, args.seed)
    for messages in requests[:200]:  # warm up
        est.difficulty(messages)
    # wall time, and this thread's CPU time (what a call costs when it is not preempted:
    # on a loaded machine wall-time tails are mostly scheduler waits)
    times: dict[str, list[float]] = {"short": [], "typical": [], "long": [], "all": []}
    cpu: dict[str, list[float]] = {k: [] for k in times}
    for messages in requests:
        c0, t0 = time.thread_time(), time.perf_counter()
        est.difficulty(messages)
        elapsed, used = time.perf_counter() - t0, time.thread_time() - c0
        size = bucket(len(messages[1]["content"]))
        for key in ("all", size):
            times[key].append(elapsed)
            cpu[key].append(used)
    chars = sorted(len(m[1]["content"]) for m in requests)

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e3

    buckets: dict[str, dict[str, float]] = {}
    for name, xs in times.items():
        xs.sort()
        cs = sorted(cpu[name])
        if xs:
            buckets[name] = {
                "n": len(xs),
                "p50": round(pct(xs, 0.50), 4),
                "p90": round(pct(xs, 0.90), 4),
                "p99": round(pct(xs, 0.99), 4),
                "mean": round(statistics.fmean(xs) * 1e3, 4),
                "cpu_p50": round(pct(cs, 0.50), 4),
                "cpu_p99": round(pct(cs, 0.99), 4),
            }
    result = {
        "import_and_load_s": round(load_s, 3),
        "requests": len(times["all"]),
        "median_prompt_chars": chars[len(chars) // 2],
        "buckets_chars": {"short": "< 300", "typical": "300 to 2,000", "long": "> 2,000"},
        "difficulty_ms": buckets,
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
