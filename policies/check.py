"""``effgate policy check FILE...``: validate policy files the way the gateway loads them.

Each file goes through both phases (schema, then compile) with the shipped estimator's
fitted skills when ``router_models`` and its artifact are available; without them the
files compile against an empty skills map, so a model on a quality-bar route must carry
its own ``skill:``. Exit status 0 when every file is valid, 1 otherwise. CI and the
Kubernetes init container run this.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence

from policies.errors import PolicyLoadError
from policies.loader import load_policy

SkillSource = Callable[[str | None], tuple[Mapping[str, float], float]]
"""artifact dir (None = the shipped one) -> (skills, discrimination)."""

DEFAULT_DISCRIMINATION = 1.0


class EstimatorUnavailable(Exception):
    """router_models is not importable, or its artifact is missing or unreadable."""


def estimator_skills(artifact: str | None = None) -> tuple[Mapping[str, float], float]:
    """The fitted skills and discrimination of an estimator artifact (default: shipped)."""
    try:
        from router_models import ArtifactError, load_estimator
    except ImportError as exc:
        raise EstimatorUnavailable(f"router_models is not importable ({exc})") from None
    try:
        est = load_estimator(artifact)
    except (ArtifactError, OSError) as exc:
        raise EstimatorUnavailable(f"no usable estimator artifact ({exc})") from None
    return dict(est.skills), float(est.discrimination)


def main(argv: Sequence[str] | None = None, *, skill_source: SkillSource = estimator_skills) -> int:
    """Check each file; print ``OK file (...)`` or its errors. Returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="effgate policy check", description="Validate effgate policy files."
    )
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--artifact", metavar="DIR", help="estimator artifact (default: shipped)")
    args = parser.parse_args(argv)
    try:
        skills, discrimination = skill_source(args.artifact)
    except EstimatorUnavailable as exc:
        if args.artifact is not None:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(
            f"note: {exc}; checking without fitted skills "
            "(models on quality-bar routes need skill: in the policy)",
            file=sys.stderr,
        )
        skills, discrimination = {}, DEFAULT_DISCRIMINATION
    failed = 0
    for path in args.files:
        try:
            policy = load_policy(path, skills=skills, discrimination=discrimination)
        except PolicyLoadError as exc:
            failed += 1
            for line in exc.errors:
                print(line, file=sys.stderr)
            continue
        print(
            f"OK {path} ({len(policy.models)} models, {len(policy.routes)} routes, "
            f"sha256 {policy.sha256})"
        )
    if failed:
        print(f"{failed} of {len(args.files)} policy files failed", file=sys.stderr)
    return 1 if failed else 0
