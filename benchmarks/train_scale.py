"""What one learner fit costs as labelled requests accumulate: time and peak memory.

    python -m benchmarks.train_scale [--n 2000 5000 10000 20000] [--data FILE ...] [--exact]
        [--heldout 2193] [--learner NAME=VALUE ...] [--one-label]

`effgate train --records` fits the heads (`router_models.learner.fit_heads`, the calibration
stage included: 1 + `calibrate` designs) once per gate fold and once on everything, so its
cost is this figure times (folds + 1). Each size runs in a fresh process (peak RSS is per
process): n examples made from the shared files' rows (shuffled, both files' prompts, each labelled
for its own file's models, as a deployment's records are partial), cycled when n exceeds
them (repeated prompts, as repeated workflows give; folds keep them together), the prior
difficulty from the shipped artifact. Above `LearnerParams.exact_kernel_max` (5,000) the
kernel's eigenpairs come from a randomized SVD of the sparse n-gram matrix instead of the
dense n x n kernel; `--exact` forces the dense kernel at every size, for comparison (it
needs 8 n^2 bytes for the kernel alone). Reported: seconds, peak RSS, and RSS before the fit.
``--heldout H`` keeps the last H shuffled rows out of training and also reports the fitted
heads' log loss and Brier score per label on them (H + n at most the rows there are, so the
held-out prompts are never trained on); ``--learner`` sets `LearnerParams` fields as
`effgate train --learner` does (e.g. ``rsvd_iter=7``). ``--one-label`` keeps one label per
training example, drawn at random: what records of served traffic mostly hold (the serving
model's outcome), where each row of the files labels all of its file's models.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.learning_curve import DEFAULT_DATA
from benchmarks.procs import status_kb


def one(
    n: int,
    paths: list[Path],
    exact: bool,
    heldout: int = 0,
    learner: Sequence[str] = (),
    one_label: bool = False,
) -> dict[str, object]:
    """Fit heads on n examples in this process; what it took (and, with ``heldout``, how
    they do on that many rows they were not fitted on)."""
    import dataclasses

    import numpy as np

    from router_models import load_estimator
    from router_models.adapt import learner_params
    from router_models.data import load_dataset
    from router_models.learner import examples_from_rows, fit_heads, prior_from_estimator

    rows = list(load_dataset(paths).rows)
    random.Random(0).shuffle(rows)  # both files at every size
    if heldout and heldout + n > len(rows):
        raise ValueError(f"--heldout {heldout} with n={n}: the files hold only {len(rows)} rows")
    base = examples_from_rows(rows[: len(rows) - heldout])
    examples = [base[i % len(base)] for i in range(n)]
    if one_label:
        draw = random.Random(1)
        examples = [
            dataclasses.replace(e, labels=dict([draw.choice(sorted(e.labels.items()))]))
            for e in examples
        ]
    est = load_estimator()
    d = np.array([est.difficulty_of_dense(e.sig.dense) for e in examples])
    params = learner_params(learner)
    if exact:
        params = dataclasses.replace(params, exact_kernel_max=n)
    before = status_kb(os.getpid(), "VmRSS") / 1024
    start = time.perf_counter()
    heads = fit_heads(examples, d, prior_from_estimator(est.skills, est.discrimination, d), params)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out: dict[str, object] = {
        "n": n,
        "kernel": "dense" if n <= params.exact_kernel_max else "randomized SVD",
        "models": len(heads.models),
        "labels": sum(len(e.labels) for e in examples),
        "fit_s": round(seconds, 1),
        "rss_before_fit_mb": round(before),
        "peak_rss_mb": round(peak),
    }
    if heldout:
        out["heldout"] = _heldout(heads, est, examples_from_rows(rows[len(rows) - heldout :]))
    return out


def _heldout(heads: Any, est: Any, examples: Sequence[Any]) -> dict[str, float | int]:
    """Log loss and Brier score per label of the heads on examples they were not fitted on."""
    import numpy as np

    cols = {m: j for j, m in enumerate(heads.models)}
    ps: list[float] = []
    ys: list[float] = []
    for e in examples:
        p = heads.p(e.sig, est.difficulty_of_dense(e.sig.dense))
        for model, y in e.labels.items():
            if model in cols:
                ps.append(float(p[cols[model]]))
                ys.append(float(y))
    if not ps:
        raise ValueError("no held-out row has a label of a model the heads know")
    q = np.clip(np.array(ps), 1e-6, 1 - 1e-6)
    y = np.array(ys)
    log_loss = -(y * np.log(q) + (1 - y) * np.log1p(-q)).mean()
    return {
        "labels": int(y.size),
        "log_loss": round(float(log_loss), 5),
        "brier": round(float(((q - y) ** 2).mean()), 5),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", nargs="+", type=int, default=[2000, 5000, 10000, 20000])
    parser.add_argument("--data", action="append", type=Path)
    parser.add_argument("--exact", action="store_true", help="the dense n x n kernel always")
    parser.add_argument("--heldout", type=int, default=0, help="rows kept out, then scored")
    parser.add_argument("--learner", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--one-label", action="store_true", help="one label per example")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    paths = args.data or list(DEFAULT_DATA)
    from router_models.adapt import learner_params

    try:
        learner_params(args.learner)  # a bad pair fails here, not in each size's process
    except ValueError as exc:
        parser.error(str(exc))
    if args.heldout < 0:
        parser.error("--heldout must be 0 or more")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    if args.one is not None:
        res = one(args.one, paths, args.exact, args.heldout, args.learner, args.one_label)
        print(json.dumps(res))
        return 0
    results = []
    for n in args.n:
        cmd = [sys.executable, "-m", "benchmarks.train_scale", "--one", str(n)]
        cmd += [a for p in paths for a in ("--data", str(p))]
        cmd += ["--exact"] if args.exact else []
        cmd += ["--heldout", str(args.heldout)]
        cmd += [a for pair in args.learner for a in ("--learner", pair)]
        cmd += ["--one-label"] if args.one_label else []
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(f"n={n}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            return 1
        res = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(res)
        print(json.dumps(res), flush=True)
    print(json.dumps({"runs": results, "load_average_1_5_15": list(os.getloadavg())}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
