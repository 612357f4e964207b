"""Errors raised while turning a policy file into a ``CompiledPolicy``.

::

    ValueError
     +-- PolicyLoadError      a file failed to load; every line says file:line: field: problem
     +-- PolicyCompileError   a validated PolicyFile failed a cross-check (carries Issues)

Routing errors (``UnknownModel``, ``NoEligibleModel``) live in ``policies.engine``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem in a policy, located by its path in the document (``("models", 1, "id")``)."""

    loc: Loc
    message: str


def format_loc(loc: Loc) -> str:
    """Render a document path the way ops read it: ``("models", 1, "id")`` -> ``models[1].id``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


class PolicyCompileError(ValueError):
    """A policy that is well-formed but inconsistent (unknown references, missing prices, ...)."""

    def __init__(self, issues: Sequence[Issue]) -> None:
        self.issues = tuple(issues)
        super().__init__("; ".join(f"{format_loc(i.loc)}: {i.message}" for i in self.issues))


class PolicyLoadError(ValueError):
    """A policy file that cannot be used. ``errors`` holds one readable line per problem."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = tuple(errors)
        super().__init__("\n".join(self.errors))
