from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

MODELS = {"big": 1.5, "mid": 0.3, "small": -0.8}
PRICES = {"big": (5.0, 15.0), "mid": (1.0, 2.0), "small": (0.1, 0.2)}


# one line of the shared format (tests of its parser and of the replay's view of it)
ROW = {
    "id": "src:1",
    "source": "src",
    "task": "math",
    "prompt": "What is 2+2?",
    "models": {
        "a": {
            "score": 1,
            "cost_usd": None,
            "input_tokens": 12,
            "output_tokens": 30,
            "output_chars": 120,
        },
        "b": {
            "score": 0.5,
            "cost_usd": None,
            "input_tokens": None,
            "output_tokens": None,
            "output_chars": None,
        },
    },
}


def write_dataset(path: Path, n: int = 160, seed: int = 0, source: str = "synth") -> Path:
    """A shared-format file whose difficulty follows the number of numbers in the prompt."""
    rng = np.random.default_rng(seed)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            k = int(rng.integers(0, 8))
            nums = " ".join(str(int(x)) for x in rng.integers(10, 999, size=k))
            prompt = f"Question {i}: combine {nums} and report the total?" if k else f"Name {i}?"
            d = -1.5 + 0.5 * k
            models = {}
            for m, s in MODELS.items():
                p = 1.0 / (1.0 + np.exp(-1.6 * (s - d)))
                models[m] = {
                    "score": float(rng.random() < p),
                    "cost_usd": None,
                    "input_tokens": None,
                    "output_tokens": None,
                    "output_chars": int(40 + 10 * k),
                }
            row = {
                "id": f"{source}:{i}",
                "source": source,
                "task": "t",
                "prompt": prompt,
                "models": models,
            }
            fh.write(json.dumps(row) + "\n")
    prices = {
        m: {
            "input_usd_per_mtok": a,
            "output_usd_per_mtok": b,
            "source": "test",
            "mean_score": 0.5,
            "n_scored": n,
        }
        for m, (a, b) in PRICES.items()
    }
    path.with_name(path.name.removesuffix(".jsonl") + ".models.json").write_text(
        json.dumps(prices), encoding="utf-8"
    )
    return path


@pytest.fixture(scope="session")
def synth_file(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "synth.jsonl")


@pytest.fixture(scope="session")
def synth_artifact(tmp_path_factory, synth_file) -> Path:
    from router_models.train import main

    out = Path(tmp_path_factory.mktemp("art")) / "a"
    assert main(["--data", str(synth_file), "--out", str(out), "--seed", "3"]) == 0
    return out
