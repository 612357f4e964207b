"""Read a policy file: safe YAML with line tracking -> ``PolicyFile`` -> ``CompiledPolicy``.

Every error names the file, the line and the dotted field path, e.g.
``policy.yaml:14: models[1].input_usd_per_mtok: Input should be a valid number``.
YAML is parsed with a ``SafeLoader`` subclass (no tags that run code) that also rejects
duplicate keys, which plain ``yaml.safe_load`` silently lets the last one win.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Hashable, Mapping
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, SequenceNode

from policies.compile import compile_policy
from policies.compiled import CompiledPolicy
from policies.errors import Issue, Loc, PolicyCompileError, PolicyLoadError, format_loc
from policies.schema import PolicyFile

LineIndex = Mapping[Loc, int]
"""Document path -> 1-based line where that key or item starts."""

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated in one mapping."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        """Build a mapping; ``ConstructorError`` at the second occurrence of a key."""
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # the base class reports an unhashable key
            if key in seen:
                raise ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _index(node: Node | None, loc: Loc, out: dict[Loc, int]) -> None:
    if isinstance(node, MappingNode):
        # keys are scalars here: the constructor has already refused unhashable ones
        for key_node, value_node in node.value:
            key = (*loc, key_node.value)
            out.setdefault(key, key_node.start_mark.line + 1)
            _index(value_node, key, out)
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            out.setdefault((*loc, i), item.start_mark.line + 1)
            _index(item, (*loc, i), out)


def line_of(lines: LineIndex, loc: Loc) -> int:
    """The line of ``loc``, or of its nearest ancestor present in the file (1 if none)."""
    for end in range(len(loc), 0, -1):
        line = lines.get(loc[:end])
        if line is not None:
            return line
    return 1


def _compose(data: bytes) -> tuple[Node | None, Any]:
    loader = _StrictLoader(data)
    try:
        node = loader.get_single_node()
        return node, None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()


def parse_yaml(data: bytes, *, filename: str) -> tuple[Any, LineIndex]:
    """Parse YAML bytes into plain data plus a line index; ``PolicyLoadError`` if malformed."""
    try:
        node, document = _compose(data)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or exc.context or "malformed"
        raise PolicyLoadError([f"{filename}:{line}: invalid YAML: {problem}"]) from None
    except yaml.YAMLError as exc:
        raise PolicyLoadError([f"{filename}:1: invalid YAML: {exc}"]) from None
    lines: dict[Loc, int] = {}
    _index(node, (), lines)
    return document, lines


def _message(error: Mapping[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown field (check the spelling; extra fields are not allowed)"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def parse_policy(data: bytes, *, filename: str) -> tuple[PolicyFile, LineIndex]:
    """Phase one: YAML bytes -> validated ``PolicyFile``; ``PolicyLoadError`` on any problem."""
    document, lines = parse_yaml(data, filename=filename)
    if document is None:
        raise PolicyLoadError([f"{filename}:1: the file is empty; expected a policy (version: 1)"])
    try:
        return PolicyFile.model_validate(document), lines
    except ValidationError as exc:
        raise validation_error(exc, lines, filename=filename) from None


def validation_error(exc: ValidationError, lines: LineIndex, *, filename: str) -> PolicyLoadError:
    """A pydantic validation error as ``file:line: field: problem`` lines."""
    return PolicyLoadError(
        [
            f"{filename}:{line_of(lines, e['loc'])}: {format_loc(e['loc'])}: {_message(e)}"
            for e in exc.errors(include_url=False)
        ]
    )


def format_issues(issues: tuple[Issue, ...], lines: LineIndex, *, filename: str) -> list[str]:
    """Render compile issues as ``file:line: field: problem`` lines."""
    return [f"{filename}:{line_of(lines, i.loc)}: {format_loc(i.loc)}: {i.message}" for i in issues]


def build_policy(
    data: bytes,
    *,
    path: str,
    skills: Mapping[str, float],
    discrimination: float,
    price_table: Mapping[str, Any] | None = None,
) -> CompiledPolicy:
    """Both phases on the bytes of one file; ``PolicyLoadError`` lists every problem."""
    spec, lines = parse_policy(data, filename=path)
    try:
        return compile_policy(
            spec,
            skills=skills,
            discrimination=discrimination,
            sha256=hashlib.sha256(data).hexdigest(),
            path=path,
            price_table=price_table,
        )
    except PolicyCompileError as exc:
        raise PolicyLoadError(format_issues(exc.issues, lines, filename=path)) from None


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """Read a policy file; an unreadable file is a ``PolicyLoadError`` naming it."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise PolicyLoadError([f"{os.fspath(path)}:1: cannot read: {exc.strerror}"]) from None


def configured_skills(path: str | os.PathLike[str]) -> dict[str, float]:
    """The ``skill:`` that each model of the policy at ``path`` sets, under its catalog id
    and under its upstream model name (the names labels carry: records use the id, labelled
    files the upstream name). An id wins over another entry's upstream name; an upstream
    name that entries with different skills share is left out (its labels say not which
    entry they are), as are models without a skill. Only the file's schema is checked
    (``effgate policy check`` checks the rest); ``PolicyLoadError`` names the file when it
    cannot be read or is invalid."""
    spec, _ = parse_policy(read_bytes(path), filename=os.fspath(path))
    out = {m.id: float(m.skill) for m in spec.models if m.skill is not None}
    upstream: dict[str, set[float]] = {}
    for m in spec.models:
        if m.skill is not None and m.upstream_model:
            upstream.setdefault(m.upstream_model, set()).add(float(m.skill))
    for name, values in upstream.items():
        if len(values) == 1:
            out.setdefault(name, values.pop())
    return out


def load_policy(
    path: str | os.PathLike[str],
    *,
    skills: Mapping[str, float],
    discrimination: float,
    price_table: Mapping[str, Any] | None = None,
) -> CompiledPolicy:
    """Read, validate and compile the policy at ``path``."""
    return build_policy(
        read_bytes(path),
        path=os.fspath(path),
        skills=skills,
        discrimination=discrimination,
        price_table=price_table,
    )
