"""Artifacts on disk: `metadata.json` + `weights.npz` (+ `heads.npz`), no pickle; validation.

metadata.json carries the feature version, the weights' sha256, the fitted skills and
discrimination, the training data files with their sha256, and evaluation metrics. An
artifact adapted to a deployment's labels (`effgate train --records` / `--base`) also has
`heads.npz`, the learned per-model heads (`router_models.heads.Heads`), described under
`metadata["heads"]` with their sha256, and the held-out comparison that let it be written.
Anything unexpected (missing file, bad JSON, hash mismatch, wrong feature version, wrong
shapes, non-finite numbers) raises `ArtifactError`, never a half-loaded estimator.
"""

from __future__ import annotations

import json
import logging
import math
import zipfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from router_models.data import sha256_file
from router_models.estimator import Estimator, Trees, Weights
from router_models.features import COMPATIBLE_FEATURE_VERSIONS, FEATURE_VERSION

log = logging.getLogger("effgate.artifact")

if TYPE_CHECKING:
    from router_models.heads import Heads

METADATA = "metadata.json"
WEIGHTS = "weights.npz"
HEADS = "heads.npz"
FORMAT = 1


class ArtifactError(Exception):
    """An artifact that cannot be used: missing, corrupt, or built for other features."""


def default_artifact_dir() -> Path:
    return Path(str(resources.files("router_models") / "artifacts" / "default"))


def _weight_arrays(w: Weights) -> dict[str, np.ndarray[Any, Any]]:
    arrays: dict[str, np.ndarray[Any, Any]] = {
        "dense_mean": w.dense_mean,
        "dense_scale": w.dense_scale,
        "dense_coef": w.dense_coef,
        "scalars": np.array([w.intercept, w.scale, w.shift]),
    }
    if w.trees is not None:
        arrays["tree_feature"] = w.trees.feature
        arrays["tree_threshold"] = w.trees.threshold
        arrays["tree_leaf"] = w.trees.leaf
    return arrays


def save_artifact(
    directory: Path,
    weights: Weights,
    *,
    skills: Mapping[str, float],
    discrimination: float,
    metadata: Mapping[str, Any],
    heads: Heads | None = None,
) -> Path:
    """Write weights (and heads), then metadata last; returns the directory.

    metadata.json is written last, to a temporary name renamed into place, so a gateway
    watching the directory sees either the old artifact or a complete new one."""
    directory.mkdir(parents=True, exist_ok=True)
    weights_path = directory / WEIGHTS
    with weights_path.open("wb") as fh:
        np.savez_compressed(fh, **_weight_arrays(weights))  # type: ignore[arg-type]
    meta = dict(metadata)
    heads_path = directory / HEADS
    if heads is not None:
        with heads_path.open("wb") as fh:
            np.savez_compressed(fh, **heads.to_arrays())  # type: ignore[arg-type]
        meta["heads"] = {"file": HEADS, "sha256": sha256_file(heads_path), **heads.meta()}
    else:
        meta.pop("heads", None)
        heads_path.unlink(missing_ok=True)
    meta.update(
        format=FORMAT,
        feature_version=FEATURE_VERSION,
        weights_file=WEIGHTS,
        weights_sha256=sha256_file(weights_path),
        skills=dict(skills),
        discrimination=float(discrimination),
    )
    text = json.dumps(meta, indent=1, sort_keys=True, allow_nan=False)
    tmp = directory / (METADATA + ".tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(directory / METADATA)
    return directory


def _read_metadata(directory: Path) -> dict[str, Any]:
    path = directory / METADATA
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path}: missing (is {directory} an estimator artifact?)") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ArtifactError(f"{path}: expected a JSON object")
    version = meta.get("feature_version")
    if version not in COMPATIBLE_FEATURE_VERSIONS:
        raise ArtifactError(
            f"{path}: feature version {version!r}, this code computes {FEATURE_VERSION!r}; "
            "retrain the artifact with `effgate train`"
        )
    if version != FEATURE_VERSION and "heads" in meta:
        # labelled files cannot hold a system prompt, so only heads fitted on records can
        # have learnt version 5's reading of one
        log.warning(
            "%s: heads fitted under feature version %s, which read a system prompt's text "
            "with the user's; if the recorded traffic had system prompts, refit them "
            "(`effgate train --records`) once records written by this version have labels",
            path,
            version,
        )
    return meta


def _read_weights(directory: Path, meta: Mapping[str, Any]) -> Weights:
    path = directory / WEIGHTS
    if not path.is_file():
        raise ArtifactError(f"{path}: missing")
    if sha256_file(path) != meta.get("weights_sha256"):
        raise ArtifactError(f"{path}: sha256 does not match metadata.json (corrupt or replaced)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k]) for k in npz.files}
        scalars = arrays["scalars"].astype(np.float64)
        trees = None
        if "tree_feature" in arrays:
            leaf = arrays["tree_leaf"].astype(np.float64)
            trees = Trees(
                feature=arrays["tree_feature"].astype(np.int64),
                threshold=arrays["tree_threshold"].astype(np.float64),
                leaf=leaf,
                depth=int(round(math.log2(leaf.shape[1]))),
            )
        return Weights(
            dense_mean=arrays["dense_mean"].astype(np.float64),
            dense_scale=arrays["dense_scale"].astype(np.float64),
            dense_coef=arrays["dense_coef"].astype(np.float64),
            intercept=float(scalars[0]),
            scale=float(scalars[1]),
            shift=float(scalars[2]),
            trees=trees,
        )
    except (KeyError, IndexError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"{path}: unreadable weights: {exc}") from exc


def _read_heads(directory: Path, meta: Mapping[str, Any]) -> Heads | None:
    spec = meta.get("heads")
    if spec is None:
        return None
    from router_models.heads import Heads

    if not isinstance(spec, dict):
        raise ArtifactError(f"{directory / METADATA}: heads must be an object")
    path = directory / HEADS
    if not path.is_file():
        raise ArtifactError(f"{path}: missing (metadata.json lists learned heads)")
    if sha256_file(path) != spec.get("sha256"):
        raise ArtifactError(f"{path}: sha256 does not match metadata.json (corrupt or replaced)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k]) for k in npz.files}
        return Heads.from_arrays(arrays, spec)
    except (KeyError, IndexError, ValueError, TypeError, OSError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"{path}: unreadable heads: {exc}") from exc


def load_estimator(directory: str | Path | None = None) -> Estimator:
    """Load an artifact directory (default: the one shipped in the package)."""
    root = Path(directory) if directory is not None else default_artifact_dir()
    meta = _read_metadata(root)
    weights = _read_weights(root, meta)
    heads = _read_heads(root, meta)
    try:
        skills = {str(k): float(v) for k, v in dict(meta["skills"]).items()}
        if not all(math.isfinite(v) for v in skills.values()):
            raise ValueError("non-finite skill")
        return Estimator(
            weights,
            skills=skills,
            discrimination=float(meta["discrimination"]),
            metadata=meta,
            heads=heads,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{root}: invalid artifact: {exc}") from exc
