"""`effgate train --records PATH` / `--data F --base DIR`: adapt an artifact to these labels.

The base artifact (default: the shipped one) is the prior. From labelled examples (the
gateway's records: feedback and shadow-judge labels joined to each request's signature; or
files in the shared format) the learner (`router_models.learner`) fits per-model heads on
top of it. Before anything is written, the gate (`router_models.gate.compare`) scores the
new router, the base, length and random on labels none of them trained on (grouped k-fold);
the artifact is written only when the new router is at least as good as the base, unless
`--force`, and the comparison is stored in its metadata.json. The written artifact keeps the
base's difficulty weights and discrimination (the prior stays one input of every head), adds
`heads.npz`, and gives every head model a skill (the policy's with `--policy`, else the
base's, else one fitted to the model's label mean) so policies compile and the IRT fallback
still works.

With `--policy FILE` (`effgate train`), the `skill:` that the policy gives a model is that
model's prior, winning over the base's as it does when the gateway compiles the policy: the
learner starts the model from it, the compared base routes it by it (what the gateway serves
until the model has a head), and the written artifact keeps it for a head model. Without
it, a model the base does not know starts from the smoothed mean of its labels.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from router_models.artifact import load_estimator, save_artifact
from router_models.data import DataError, load_dataset, prompt_cost, sha256_file
from router_models.estimator import Estimator
from router_models.gate import compare, format_comparison
from router_models.heads import Heads
from router_models.irt import irt_p
from router_models.learner import (
    Example,
    LearnerParams,
    check_knn,
    examples_from_rows,
    fit_heads,
    fit_heads_reported,
    prior_from_estimator,
)
from router_models.neighbours import knn_grid
from router_models.records import load_examples
from router_models.routing import skill_from_mean

F64 = npt.NDArray[np.float64]
MIN_EXAMPLES = 50
# `--records` trains on the newest this many labelled requests by default: a fit's time and
# memory grow with them (docs/operations.md, "Learning from traffic"), and the newest
# traffic is what the router will serve
MAX_RECORD_EXAMPLES = 20_000
GroupBy = Literal["prompt", "task"]  # what grouped validation keeps together
GROUP_BY: tuple[GroupBy, ...] = get_args(GroupBy)


def _difficulty(est: Estimator, examples: Sequence[Example]) -> F64:
    return np.array([est.difficulty_of_dense(e.sig.dense) for e in examples], dtype=np.float64)


def fit_for(base: Estimator, params: LearnerParams, seed: int) -> Any:
    """A gate ``fit``: examples -> a scorer of the heads fitted on them over ``base``."""

    def fit(train: Sequence[Example]) -> Any:
        d = _difficulty(base, train)
        heads = fit_heads(
            train, d, prior_from_estimator(base.skills, base.discrimination, d), params, seed
        )
        return scorer(base, heads)

    return fit


def scorer(est: Estimator, heads: Heads | None, skills: Mapping[str, float] | None = None) -> Any:
    """examples -> {model: P}: the heads where they have the model, else the IRT prior (with
    ``skills`` for models the estimator has no skill for)."""
    known = {**(skills or {}), **est.skills}

    def score(examples: Sequence[Example]) -> Mapping[str, F64]:
        d = _difficulty(est, examples)
        out: dict[str, F64] = {m: irt_p(est.discrimination, s, d) for m, s in known.items()}
        if heads is not None and examples:
            p = heads.p_many([e.sig for e in examples], d, [e.tag for e in examples])
            for j, m in enumerate(heads.models):
                out[m] = p[:, j]
        return out

    return score


def with_skills(base: Estimator, configured: Mapping[str, float]) -> Estimator:
    """``base`` with ``configured`` skills (a policy's), each winning over the base's."""
    return Estimator(
        base.weights,
        skills={**base.skills, **configured},
        discrimination=base.discrimination,
        metadata=base.metadata,
        heads=base.heads,
    )


def _skills(
    original: Mapping[str, float], base: Estimator, heads: Heads, examples: Sequence[Example]
) -> dict[str, float]:
    """The base artifact's ``original`` skills; each head model's skill in ``base`` (a
    policy's where it set one), else one fitted to its label mean."""
    learnt = {m: s for m, s in base.skills.items() if heads.index(m) is not None}
    return {**original, **learnt, **fitted_skills(base, heads.models, examples)}


def fitted_skills(
    base: Estimator, models: Sequence[str], examples: Sequence[Example]
) -> dict[str, float]:
    """A skill for each of ``models`` that the base has none for and ``examples`` label:
    the one at which the base's mean P over the prompts labelling it is its smoothed label
    mean, (sum + 1) / (count + 2), as the learner starts such a model
    (`design.unknown_offsets`): three labels all 1 do not make a certainty."""
    out: dict[str, float] = {}
    d = _difficulty(base, examples)
    for m in models:
        if m in base.skills:
            continue
        rows = [i for i, e in enumerate(examples) if m in e.labels]
        if rows:
            mean = (sum(float(examples[i].labels[m]) for i in rows) + 1.0) / (len(rows) + 2.0)
            out[m] = skill_from_mean(d[rows], base.discrimination, mean)
    return out


def fit_base_for(base: Estimator, heads: Heads | None) -> Any:
    """A gate ``fit_base``: the base router for one fold, a model it knows nothing of (no
    skill, no head) routed by the IRT prior with a skill fitted to the fold's labels, as
    the written artifact gives it one (`fitted_skills`); without it such a model has no
    base P, no pair or Brier score compares the routers on it, and a deployment whose
    models the shipped prior does not know could never pass the gate."""
    have = set(heads.models) if heads is not None else set()

    def fit(train: Sequence[Example]) -> Any:
        models = sorted({m for e in train for m in e.labels} - have)
        return scorer(base, heads, fitted_skills(base, models, train))

    return fit


def _prices(rows: Sequence[Any], prices: Mapping[str, Any]) -> dict[str, float]:
    """Mean USD per request of each priced model over the rows that label it."""
    totals: dict[str, list[float]] = {}
    for r in rows:
        for m in r.results:
            c = prompt_cost(r, m, prices)
            if c is not None:
                totals.setdefault(m, []).append(c)
    return {m: float(np.mean(v)) for m, v in totals.items() if v}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--force",
        action="store_true",
        help="write the adapted artifact even when the held-out comparison says it is worse",
    )
    p.add_argument("--folds", type=int, default=5, help="grouped folds of the comparison")
    p.add_argument(
        "--max-examples",
        type=int,
        default=MAX_RECORD_EXAMPLES,
        help="with --records: train on the newest this many labelled requests (default "
        f"{MAX_RECORD_EXAMPLES:,}: about 9 minutes and 1.8 GB on 2 cores; 0 keeps all)",
    )
    p.add_argument(
        "--group-by",
        choices=GROUP_BY,
        default="prompt",
        help="what the comparison's folds (and select=1's inner folds) keep together: "
        "'prompt' (identical prompts; default: will it route this traffic better, whose "
        "workflows repeat) or 'task' (a --data row's task, a record's workflow tag: will it "
        "hold on workflows these labels do not have)",
    )
    p.add_argument(
        "--task-tags",
        action="store_true",
        help="with --data: each row's task is its workflow tag, as if its client had sent "
        "x-effgate-task (records carry the tag their requests had)",
    )
    p.add_argument(
        "--learner",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one router_models.learner.LearnerParams field (repeatable)",
    )


def regroup(examples: Sequence[Example], by: GroupBy) -> list[Example]:
    """The examples with the group of every grouped validation (the comparison's folds, and
    select=1's inner ones): ``prompt``, the signature's digest (identical prompts share a
    fold; a signature made without one keeps its group); ``task``, a --data row's task or a
    record's workflow tag (a record without one keeps its digest). ValueError otherwise."""
    if by not in GROUP_BY:
        raise ValueError(f"group by {by!r}: expected one of {', '.join(GROUP_BY)}")
    if by == "prompt":
        return [dataclasses.replace(e, group=e.sig.digest or e.group) for e in examples]
    return [dataclasses.replace(e, group=e.tag or e.group) for e in examples]


def learner_params(pairs: Sequence[str]) -> LearnerParams:
    """``["lam_model=4", ...]`` -> LearnerParams; ValueError naming a bad pair."""
    fields = {f.name: str(f.type) for f in dataclasses.fields(LearnerParams)}
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or name not in fields:
            raise ValueError(
                f"--learner {pair!r}: expected NAME=VALUE, NAME one of {sorted(fields)}"
            )
        kind = {"int": int, "float": float, "str": str}.get(fields[name], float)
        try:
            values[name] = kind(raw)
        except ValueError:
            raise ValueError(f"--learner {pair!r}: {raw!r} is not a {kind.__name__}") from None
    params = LearnerParams(**values)
    if params.rsvd_iter < 0:
        raise ValueError(f"--learner rsvd_iter={params.rsvd_iter}: must be 0 or more")
    check_knn(params)  # here, before any data is read
    return params


def main(args: argparse.Namespace, configured: Mapping[str, float] | None = None) -> int:
    """Adapt ``args.base`` (None: the shipped artifact) to ``args.records`` / ``args.data``;
    ``configured``: the skills of ``args.policy``'s models (`with_skills`)."""
    base = load_estimator(args.base)
    original = base.skills
    if configured is not None:
        base = with_skills(base, configured)
    examples: list[Example] = []
    prices: dict[str, float] = {}
    sources: dict[str, Any] = {}
    if args.data:
        dataset = load_dataset(args.data)
        examples += examples_from_rows(dataset.rows, tags=args.task_tags)
        prices = _prices(dataset.rows, dataset.prices)
        sources["data"] = [
            {"file": Path(p).name, "sha256": sha256_file(Path(p))} for p in args.data
        ]
    if args.records is not None:
        cap = args.max_examples or None
        recs, summary = load_examples(args.records, max_examples=cap)
        examples += recs
        sources["records"] = {"name": args.records.name, **asdict(summary)}
        print(
            f"records: {summary.labelled} labelled requests ({summary.labels_feedback} feedback, "
            f"{summary.labels_judge} judge labels) of {summary.requests}; skipped "
            f"{summary.skipped_no_signature} without signature or prompt, "
            f"{summary.skipped_no_label} without labels, {summary.bad_lines} unreadable lines",
            file=sys.stderr,
        )
        if summary.beyond_cap:
            print(
                f"records: training on the newest {len(recs):,} labelled requests; "
                f"{summary.beyond_cap:,} older ones left out (--max-examples, 0 keeps all)",
                file=sys.stderr,
            )
        if summary.older_system_dense:
            print(
                f"records: {summary.older_system_dense} labelled requests with a system prompt "
                "were recorded before feature version 6 (their structure features read the "
                "system prompt too); used as they are",
                file=sys.stderr,
            )
    if len(examples) < MIN_EXAMPLES:
        raise DataError(
            f"only {len(examples)} labelled requests; adapting needs at least {MIN_EXAMPLES}"
        )
    params = learner_params(args.learner)
    policy: dict[str, Any] = {}
    if configured is not None:
        labelled = sorted({m for e in examples for m in e.labels} & set(configured))
        policy = {
            "file": Path(args.policy).name,
            "sha256": sha256_file(Path(args.policy)),
            "skills": {m: configured[m] for m in labelled},
        }
        if labelled:
            print(
                f"policy {policy['file']}: the skill: it sets is the prior of "
                f"{len(labelled)} labelled model(s): {', '.join(labelled)}"
            )
        else:
            print(
                f"policy {policy['file']}: sets no skill: for any labelled model (matched by "
                "catalog id or upstream_model); they start from the base or their labels"
            )
    base_heads = base.heads
    grouped = regroup(examples, args.group_by)
    started = time.monotonic()

    def progress(done: int, folds: int) -> None:
        # stderr, as it goes: a fit of 20,000 labelled requests takes minutes per fold
        took = time.monotonic() - started
        print(f"held-out comparison: fold {done} of {folds} done ({took:.0f} s)", file=sys.stderr)

    report = compare(
        grouped,
        fit_for(base, params, args.seed),
        scorer(base, base_heads),
        folds=args.folds,
        seed=args.seed,
        prices=prices or None,
        fit_base=fit_base_for(base, base_heads),
        progress=progress,
    )
    report["group_by"] = args.group_by
    print(format_comparison(report))
    if not report["better"] and not args.force:
        print(
            f"effgate train: not written: the adapted router is not better than its base on "
            f"held-out labels ({report['rule']}); --force writes it anyway",
            file=sys.stderr,
        )
        return 3
    print(f"fitting the artifact's heads on all {len(grouped)} examples", file=sys.stderr)
    d = _difficulty(base, grouped)
    heads, chosen = fit_heads_reported(
        grouped, d, prior_from_estimator(base.skills, base.discrimination, d), params, args.seed
    )
    meta = {
        key: value
        for key, value in base.metadata.items()
        if key not in ("format", "feature_version", "weights_file", "weights_sha256", "skills")
        and key not in ("discrimination", "heads", "adapted")
    }
    meta["adapted"] = {
        "base": str(args.base) if args.base is not None else "default",
        "base_weights_sha256": base.metadata.get("weights_sha256"),
        "sources": sources,
        **({"policy": policy} if configured is not None else {}),
        "examples": len(examples),
        "seed": args.seed,
        "params": asdict(params),
        "chosen": chosen,
        "comparison": report,
        "forced": bool(args.force and not report["better"]),
    }
    save_artifact(
        args.out,
        base.weights,
        skills=_skills(original, base, heads, examples),
        discrimination=base.discrimination,
        metadata=meta,
        heads=heads,
    )
    counts = ", ".join(
        f"{m} {int(c)}" for m, c in zip(heads.models, heads.label_counts, strict=True)
    )
    print(f"wrote {args.out}: heads for {len(heads.models)} models (labels: {counts})")
    if "beta" in chosen:
        shared, own = chosen["beta"]
        print(
            f"departure from the prior kept (held-out log loss): {shared:.0%} of the part "
            f"shared by the models, {own:.0%} of each model's own"
        )
    stage = [f"{heads.clusters.k} workflow clusters"] if heads.clusters is not None else []
    stage += [f"{len(heads.tags)} workflow tags"] if heads.tags else []
    print(f"calibration stage: {', '.join(stage) or 'no cluster or tag shifts'}")
    nb = heads.neighbours
    if nb is not None:
        print(f"neighbour stage: k={nb.k} of {nb.size} references")
    elif knn_grid(params):
        print("neighbour stage: not used (no held-out gain)")
    else:
        print("neighbour stage: off (--learner knn=10,20 turns it on)")
    return 0
