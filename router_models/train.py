"""`effgate train`: labelled data (shared JSONL and/or gateway records) -> artifact directory.

    effgate train --data F.jsonl [--data ...] --out DIR [--seed N]
        train the prior from scratch: IRT difficulty, the regressor, calibration
    effgate train --records PATH [--data F.jsonl ...] [--base DIR] --out DIR [--force]
    effgate train --data F.jsonl --base DIR --out DIR [--force]
        adapt a base artifact (default: the shipped one) to these labels: learned per-model
        heads, written only when they beat the base on held-out labels (router_models.adapt)
    ... --policy FILE
        when adapting: the skills the policy's models set are the prior of those models, as
        the gateway routes by them (effgate train only: the policies package reads the file)

Deterministic for a fixed seed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from router_models import adapt
from router_models.artifact import ArtifactError, save_artifact
from router_models.data import DataError, Price, Row, load_dataset, sha256_file
from router_models.evaluate import evaluate_rows
from router_models.fit import TRAIN_EXTRA, FitParams, MissingExtra, require_scipy, sklearn_models
from router_models.pipeline import train


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="effgate train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", action="append", default=[], type=Path)
    p.add_argument("--records", type=Path)
    p.add_argument(
        "--base",
        type=Path,
        help="adapt this artifact to the labels (with --records: default the shipped one)",
    )
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-fraction", type=float, default=0.15)
    p.add_argument(
        "--policy",
        type=Path,
        help="when adapting: the policy the gateway serves with; the skill: of its models is "
        "their prior (the IRT P the gateway routes them by until they have heads), in the "
        "learner's start and in the compared base, winning over the base artifact's skill",
    )
    adapt.add_arguments(p)
    return p


def data_entries(paths: Sequence[Path]) -> list[dict[str, str]]:
    """Training files as names relative to their common directory, with sha256."""
    if not paths:
        return []
    resolved = [p.resolve() for p in paths]
    root = Path(os.path.commonpath([p.parent for p in resolved]))
    return [{"file": p.relative_to(root).as_posix(), "sha256": sha256_file(p)} for p in resolved]


def _held_out_reports(
    rows: Sequence[Row],
    test_idx: np.ndarray[Any, Any],
    d: np.ndarray[Any, Any],
    a: float,
    prices: dict[str, Price],
) -> dict[str, Any]:
    """In-distribution routing metrics per source, on the held-out rows."""
    out: dict[str, Any] = {}
    by_source: dict[str, list[int]] = {}
    for k, i in enumerate(test_idx):
        by_source.setdefault(rows[int(i)].source, []).append(k)
    for source, ks in sorted(by_source.items()):
        sub = [rows[int(test_idx[k])] for k in ks]
        try:
            rep = evaluate_rows(sub, d[ks], a, prices)
        except (ValueError, DataError) as exc:
            out[source] = {"skipped": str(exc)}
            continue
        rep["multi"].pop("singles", None)
        for r in rep["multi"].get("routers", {}).values():
            r.pop("curve", None)
        out[source] = rep
    return out


def progress_bar() -> Any:
    """tqdm's class (imported here: it comes with `effgate[train]`); MissingExtra without it."""
    try:
        from tqdm import tqdm
    except ImportError as exc:
        raise MissingExtra(f"training needs tqdm: {TRAIN_EXTRA}") from exc
    return tqdm


PolicySkills = Callable[[Path], Mapping[str, float]]
"""A policy file -> the skill each of its models sets (`policies.loader.configured_skills`,
which `effgate train` passes in: router_models does not import policies)."""


def main(argv: list[str], *, policy_skills: PolicySkills | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.data and args.records is None:
        print("effgate train: give --data FILE (repeatable) and/or --records PATH", file=sys.stderr)
        return 2
    adapting = args.records is not None or args.base is not None
    if args.max_examples < 0:
        print("effgate train: --max-examples is 0 (keep all) or more", file=sys.stderr)
        return 2
    if args.policy is not None and not adapting:
        print(
            "effgate train: --policy is for adapting (--records, or --data with --base); "
            "training a prior from scratch fits every model's skill",
            file=sys.stderr,
        )
        return 2
    if args.policy is not None and policy_skills is None:
        print(
            "effgate train: --policy needs the policies package: run `effgate train`",
            file=sys.stderr,
        )
        return 2
    if adapting:
        try:  # before reading any data: the learner needs scipy
            require_scipy()
        except MissingExtra as exc:
            print(f"effgate train: {exc}", file=sys.stderr)
            return 2
        try:
            configured = None
            if args.policy is not None and policy_skills is not None:
                configured = dict(policy_skills(args.policy))
            return adapt.main(args, configured)
        except (ArtifactError, DataError, OSError, ValueError) as exc:
            print(f"effgate train: {exc}", file=sys.stderr)
            return 1
    try:  # before reading any data: fitting needs both
        tqdm = progress_bar()
        sklearn_models()
    except MissingExtra as exc:
        print(f"effgate train: {exc}", file=sys.stderr)
        return 2
    notes: list[str] = []
    data_paths: list[Path] = list(args.data)
    try:
        dataset = load_dataset(data_paths)
        rows = list(dataset.rows)
        if len(rows) < 10:
            raise DataError(f"only {len(rows)} labelled prompts; need at least 10")
        with tqdm(total=len(rows), desc="features", unit="prompt", file=sys.stderr) as bar:
            trained = train(
                rows,
                seed=args.seed,
                test_fraction=args.test_fraction,
                step=lambda s: bar.set_description(s),
                featurize_progress=bar,
            )
    except (ArtifactError, DataError, OSError, ValueError) as exc:
        print(f"effgate train: {exc}", file=sys.stderr)
        return 1
    w, test_idx = trained.weights, trained.test_idx
    metrics = dict(trained.metrics)
    metrics["routing_held_out"] = _held_out_reports(
        rows, test_idx, trained.test_difficulty, trained.discrimination, dict(dataset.prices)
    )
    meta = {
        "training_data": data_entries(data_paths),
        "records": None,
        "anchored_skills": [],
        "seed": args.seed,
        "params": asdict(FitParams()),
        "rows": {"train": trained.n_train, "held_out": trained.n_test},
        "held_out_ids": sorted(rows[int(i)].id for i in test_idx),
        "metrics": metrics,
        "notes": notes,
    }
    save_artifact(
        args.out, w, skills=trained.skills, discrimination=trained.discrimination, metadata=meta
    )
    held: dict[str, Any] = trained.metrics.get("held_out", {})  # type: ignore[assignment]
    print(
        f"wrote {args.out}: {trained.n_train} train / {trained.n_test} held-out prompts, "
        f"a = {trained.discrimination:.3f}, held-out Brier {held.get('brier')} "
        f"(constant {held.get('brier_constant')})"
    )
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return 0
