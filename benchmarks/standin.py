"""A stand-in estimator artifact, for benchmark runs where the shipped one does not load.

The gateway loads an estimator at start-up even to serve explicit models, so without a usable
artifact nothing can be measured. The stand-in is trained by ``effgate train`` (the public
path, so it follows the artifact format wherever it goes) on a small synthetic data set: its
structure, and so what scoring one request costs, is that of any default fit; its predictions
mean nothing, so which model a routed request picks is arbitrary (both reach the same fake).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from router_models import ArtifactError, load_estimator

WORDS = [
    "explain",
    "prove",
    "theorem",
    "write",
    "code",
    "function",
    "summarize",
    "translate",
    "list",
    "sort",
    "compute",
    "integral",
    "derivative",
    "poem",
    "story",
    "python",
    "rust",
    "bug",
    "fix",
    "review",
    "design",
    "test",
    "cache",
    "query",
]


def default_estimator_error() -> str | None:
    """None when ``router_models.load_estimator()`` works, else its error."""
    try:
        load_estimator()
    except ArtifactError as exc:
        return str(exc)
    return None


def synthetic_rows(n: int, seed: int = 0) -> list[dict[str, object]]:
    """Rows of the shared training format: longer prompts fail the small model more often."""
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    for i in range(n):
        length = rng.randint(3, 60)
        prompt = " ".join(rng.choice(WORDS) for _ in range(length))
        hard = length / 60
        scores = {
            "mock-small": {"score": float(rng.random() > hard)},
            "mock-large": {"score": float(rng.random() > hard / 3)},
        }
        rows.append(
            {"id": f"s{i}", "source": "bench", "task": "t", "prompt": prompt, "models": scores}
        )
    return rows


def write_standin(directory: Path, rows: int = 40, seed: int = 0) -> Path:
    """Train an artifact on synthetic rows into ``directory/artifact``; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "synthetic.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(rows, seed)))
    out = directory / "artifact"
    cmd = [sys.executable, "-m", "gateway.cli", "train", "--data", str(data), "--out", str(out)]
    done = subprocess.run([*cmd, "--seed", str(seed)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"effgate train failed ({done.returncode}): {done.stderr[-2000:]}")
    load_estimator(out)  # fail here, not in the gateway
    return out
