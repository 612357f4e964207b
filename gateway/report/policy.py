"""Policy side of `effgate report`: hints from the policy file, and the YAML findings propose.

With `--policy FILE` the report reads the file through the policies loader (phase one: the
validated `PolicyFile`, no compile, so no estimator is needed) for each route's `quality_bar`,
its named rules as written, and each model's `max_retries`. Without it, the bars are those the
records logged.

Snippets follow `policies/schema.py` (routes and models are lists of items named by `name` /
`id`; a rule is `{name, when: {task: [...]}, quality_bar | candidates | model}`). Every name that
came from records is written as a plain scalar only when it is a safe identifier and JSON-quoted
otherwise, so a hostile task name cannot change a snippet's structure or break out of a comment.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from policies.errors import PolicyLoadError
from policies.loader import parse_policy, read_bytes
from policies.schema import ModelSpec, RuleSpec

PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}
DEFAULT_RETRIES: int = ModelSpec.model_fields["max_retries"].default


class PolicyHintsError(Exception):
    """The --policy file cannot be read or is not a valid policy."""


@dataclass(frozen=True, slots=True)
class PolicyHints:
    path: str | None = None
    bars: Mapping[str, float] = field(default_factory=dict)
    rules: Mapping[tuple[str, str], RuleSpec] = field(default_factory=dict)
    max_retries: Mapping[str, int] = field(default_factory=dict)


def load_hints(path: Path | None) -> PolicyHints:
    if path is None:
        return PolicyHints()
    try:
        spec, _ = parse_policy(read_bytes(path), filename=str(path))
    except PolicyLoadError as exc:
        raise PolicyHintsError("; ".join(exc.errors)) from None
    return PolicyHints(
        path=str(path),
        bars={r.name: r.quality_bar for r in spec.routes if r.quality_bar is not None},
        rules={(r.name, rule.name): rule for r in spec.routes for rule in r.rules if rule.name},
        max_retries={m.id: m.max_retries for m in spec.models},
    )


def scalar(value: str) -> str:
    """A YAML scalar for a record-supplied name: plain when safe, JSON-quoted otherwise."""
    if PLAIN.fullmatch(value) and value.lower() not in YAML_WORDS:
        return value
    return json.dumps(value)


def rule_name(task: str, model: str) -> str:
    """A schema-valid rule name (`^[A-Za-z0-9][\\w.:@/+-]*$`) for a task pinned to a model."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", f"{task}-{model}").strip("-_")[:60]
    return name if name[:1].isalnum() else f"pin-{model}"


def _route(route: str) -> str:
    return f"routes:\n  - name: {scalar(route)}\n"


def bar_change(route: str, old: float, new: float) -> str:
    return (
        f"# in the route named {scalar(route)}; its other fields stay as they are\n"
        + _route(route)
        + f"    quality_bar: {new:.2f}  # was {old:.2f}\n"
    )


def pin_task(route: str, task: str, model: str, ahead_of: str | None) -> str:
    """A rule pinning one task to one model; the route's candidates stay its fallbacks."""
    where = f", ahead of rule {scalar(ahead_of)}" if ahead_of else ""
    after = ""
    if ahead_of:
        after = f"# rule {scalar(ahead_of)} then no longer sees the task; drop it if that was all\n"
    return (
        f"# add to the rules of the route named {scalar(route)}{where}\n"
        "# (rules apply in order, the first match wins)\n"
        + after
        + _route(route)
        + "    rules:\n"
        + f"      - name: {scalar(rule_name(task, model))}\n"
        + f"        when: {{task: [{scalar(task)}]}}\n"
        + f"        model: {scalar(model)}\n"
    )


def unpin(route: str, rule: str, model: str, bar: float, hints: PolicyHints) -> str:
    """Remove a rule's pin; with the policy file, the rule as it should read afterwards."""
    head = (
        f"# rule {scalar(rule)} of the route named {scalar(route)} pins {scalar(model)}: remove\n"
        f"# the pin; its requests then go to the cheapest model that clears the bar ({bar:.2f})\n"
    )
    spec = hints.rules.get((route, rule))
    if spec is None:
        pin = f"model: {scalar(model)}"
        return head + f"# delete `{pin}` from it (the whole rule if it sets nothing else)\n"
    body = spec.model_dump(mode="json", exclude_defaults=True)
    now = _flow(body)
    body.pop("model", None)
    if not {"quality_bar", "candidates"} & body.keys():
        return head + f"# the rule sets nothing else: delete it\n#   {now}\n"
    return head + f"# now: {now}\n" + _route(route) + f"    rules:\n      - {_flow(body)}\n"


def retries_change(model: str, current: int | None) -> str:
    was = current if current is not None else f"{DEFAULT_RETRIES} (the default)"
    new = (current if current is not None else DEFAULT_RETRIES) + 1
    return (
        f"# in the model with id {scalar(model)}; its other fields stay as they are\n"
        f"models:\n  - id: {scalar(model)}\n    max_retries: {new}  # was {was}\n"
    )


def _flow(body: object) -> str:
    return yaml.safe_dump(body, default_flow_style=True, sort_keys=False, width=10_000).strip()
