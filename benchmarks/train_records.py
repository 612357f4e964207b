"""A whole `effgate train --records` run, as an operator starts it: time and peak memory.

    python -m benchmarks.train_records [--n 20000] [--data FILE ...] [--max-examples M]
        [--force] [--keep DIR]

Writes n request records in the gateway's format (docs/contracts.md, "Request records"):
chat requests made from the shared files' prompts (both files, shuffled, cycled past their
rows as repeated workflows are), each with its signature and one feedback record scoring the
model that "served" it, drawn from the row's labelled models: what served traffic's records
mostly hold. Then runs `effgate train --records DIR --out DIR` in a child process (the shipped
artifact as its base; ``--max-examples`` and ``--force`` passed on) and reports
its wall time, its peak RSS, its exit status and the gate's verdict line. `benchmarks.
train_scale` times one fit; this times everything the command does (reading the records,
the comparison's folds, the final fit, writing the artifact). ``--keep DIR`` writes the
records and the artifact there instead of a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.learning_curve import DEFAULT_DATA


def write_records(path: Path, n: int, paths: list[Path], seed: int = 0) -> int:
    """n labelled request records (and their feedback) at ``path``; the bytes written."""
    from router_models.data import load_dataset
    from router_models.signature import signature

    rows = list(load_dataset(paths).rows)
    rng = random.Random(seed)
    rng.shuffle(rows)
    size = 0
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            row = rows[i % len(rows)]
            model = rng.choice(sorted(row.results))
            rid = f"req_{i}"
            sig = signature(list(row.messages)).to_json()
            when = f"2026-12-08T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}.000Z"
            req = {"type": "request", "id": rid, "endpoint": "chat", "time": when,
                   "route": "auto", "model": model, "upstream_model": model, "status": 200,
                   "outcome": "ok", "task": None, "signature": sig}  # fmt: skip
            fb = {"type": "feedback", "request_id": rid, "time": when, "accepted": None,
                  "score": float(row.results[model].score)}  # fmt: skip
            text = json.dumps(req) + "\n" + json.dumps(fb) + "\n"
            fh.write(text)
            size += len(text)
    return size


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20000, help="labelled requests to write")
    parser.add_argument("--data", action="append", type=Path)
    parser.add_argument("--max-examples", type=int, help="passed to effgate train")
    parser.add_argument("--keep", type=Path, help="write records and artifact here")
    parser.add_argument("--force", action="store_true", help="passed to effgate train")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    paths = args.data or list(DEFAULT_DATA)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        records = work / "records"
        records.mkdir(parents=True, exist_ok=True)
        size = write_records(records / "records.jsonl", args.n, paths)
        out = work / "artifact"
        cmd = [sys.executable, "-m", "gateway.cli", "train", "--records", str(records)]
        cmd += ["--out", str(out)]
        if args.max_examples is not None:
            cmd += ["--max-examples", str(args.max_examples)]
        cmd += ["--force"] if args.force else []
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        said = (done.stdout + done.stderr).splitlines()
        verdict = next((line for line in said if line.startswith("verdict:")), None)
        result = {
            "n": args.n,
            "records_mb": round(size / 1e6, 1),
            "exit_status": done.returncode,
            "train_s": round(seconds, 1),
            "peak_rss_mb": round(peak),
            "verdict": verdict,
            "wrote_artifact": (out / "metadata.json").exists(),
            "cpus": os.cpu_count(),
            "load_average_1_5_15": list(os.getloadavg()),
        }
        print(json.dumps(result))
        if done.returncode not in (0, 3):  # 3: the gate said not better (a result, not a failure)
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
