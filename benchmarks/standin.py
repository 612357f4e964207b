"""A stand-in estimator artifact, for benchmark runs where the shipped one does not load.

The gateway loads an estimator at start-up even to serve explicit models, so without a usable
artifact nothing can be measured. The stand-in has the shapes of a default fit
(``router_models.fit.FitParams``: dense ridge, hashed n-gram weights, 150 trees of depth 3), so
scoring one request costs what the real artifact costs; its numbers are random, so which model a
routed request picks is arbitrary (both go to the same fake upstream).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from router_models import ArtifactError, load_estimator
from router_models.artifact import save_artifact
from router_models.estimator import Trees, Weights
from router_models.features import HASH_SIZE, N_DENSE, N_GROUPS
from router_models.fit import FitParams

SKILLS = {"mock-small": 0.5, "mock-large": 2.0}


def default_estimator_error() -> str | None:
    """None when ``router_models.load_estimator()`` works, else its error."""
    try:
        load_estimator()
    except ArtifactError as exc:
        return str(exc)
    return None


def write_standin(directory: Path, seed: int = 0) -> Path:
    """Write a loadable artifact with default-fit shapes and random weights; returns its path."""
    rng = np.random.default_rng(seed)
    params = FitParams()
    depth, n_trees = params.tree_depth, params.trees
    n_internal = (1 << depth) - 1
    weights = Weights(
        dense_mean=rng.normal(size=N_DENSE),
        dense_scale=np.abs(rng.normal(size=N_DENSE)) + 0.5,
        dense_coef=rng.normal(scale=0.1, size=N_DENSE),
        hashed_coef=rng.normal(scale=0.01, size=(N_GROUPS, HASH_SIZE)).astype(np.float32),
        intercept=0.0,
        trees=Trees(
            feature=rng.integers(0, N_DENSE, size=(n_trees, n_internal)).astype(np.int64),
            threshold=rng.normal(size=(n_trees, n_internal)),
            leaf=rng.normal(scale=0.01, size=(n_trees, 1 << depth)),
            depth=depth,
        ),
    )
    meta = {"notes": ["benchmark stand-in: random weights with default-fit shapes"]}
    save_artifact(directory, weights, skills=SKILLS, discrimination=1.5, metadata=meta)
    load_estimator(directory)  # fail here, not in the gateway, if the format moved on
    return directory
