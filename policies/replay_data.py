"""The shared routing dataset format, as ``effgate eval --policy`` sees it.

One JSON object per line: ``id``, ``source``, ``task``, ``prompt``, ``models`` (data model
name -> ``{score, cost_usd, input_tokens, output_tokens, output_chars}``), optional
``turns`` and ``meta`` (see the data folder's README). ``router_models.data`` is the one parser
of it (``parse_row``, ``read_rows``); this module keeps only what a replay needs of each row.
A replay is an offline tool, so importing ``router_models`` here is fine.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router_models.data import CHARS_PER_TOKEN, DataError, Row, parse_row, read_rows

DatasetError = DataError
"""A dataset line that does not follow the format; the message names file and line."""


@dataclass(frozen=True, slots=True)
class Label:
    """One data model's result on one prompt."""

    score: float
    input_tokens: int | None
    output_tokens: int | None
    output_chars: int | None


@dataclass(frozen=True, slots=True)
class Prompt:
    """One dataset row: the text (all user turns) and each data model's label."""

    id: str
    task: str | None
    turns: tuple[str, ...]
    labels: Mapping[str, Label]

    @property
    def messages(self) -> list[dict[str, str]]:
        """The row as OpenAI chat messages (one user message per turn)."""
        return [{"role": "user", "content": turn} for turn in self.turns]

    @property
    def chars(self) -> int:
        """Characters over all turns (the basis of token estimates)."""
        return sum(len(turn) for turn in self.turns)


def estimate_tokens(chars: int) -> int:
    """Tokens estimated from characters (at least 1 for a non-empty text)."""
    return math.ceil(chars / CHARS_PER_TOKEN)


def _prompt(row: Row) -> Prompt:
    return Prompt(
        id=row.id,
        task=row.task or None,
        turns=tuple(str(m["content"]) for m in row.messages),
        labels={
            m: Label(r.score, r.input_tokens, r.output_tokens, r.output_chars)
            for m, r in row.results.items()
        },
    )


def parse_prompt(raw: Any, where: str) -> Prompt:
    """One decoded JSON line -> ``Prompt``; ``DatasetError`` naming ``where`` if malformed."""
    return _prompt(parse_row(raw, where))


def read_prompts(paths: Sequence[str | Path], limit: int | None = None) -> list[Prompt]:
    """Read JSON Lines files in order (blank lines skipped), up to ``limit`` prompts."""
    return [_prompt(row) for row in read_rows(paths, limit)]


def data_models(prompts: Iterable[Prompt]) -> set[str]:
    """Every data model that has a label somewhere."""
    return {name for p in prompts for name in p.labels}
