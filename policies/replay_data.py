"""The shared routing dataset format, as ``effgate eval --policy`` reads it.

One JSON object per line: ``id``, ``source``, ``task``, ``prompt``, ``models`` (data model
name -> ``{score, cost_usd, input_tokens, output_tokens, output_chars}``), optional
``turns`` and ``meta`` (see the data folder's README). Only what a replay needs is kept.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHARS_PER_TOKEN = 4
"""The estimate used when a dataset has no token counts: about four characters a token."""


class DatasetError(ValueError):
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


def _count(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise DatasetError(f"{where}: expected a non-negative integer or null, got {value!r}")


def _label(raw: Any, where: str) -> Label:
    if not isinstance(raw, dict):
        raise DatasetError(f"{where}: expected an object")
    score = raw.get("score")
    if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1:
        raise DatasetError(f"{where}.score: expected a number in [0, 1], got {score!r}")
    return Label(
        score=float(score),
        input_tokens=_count(raw.get("input_tokens"), f"{where}.input_tokens"),
        output_tokens=_count(raw.get("output_tokens"), f"{where}.output_tokens"),
        output_chars=_count(raw.get("output_chars"), f"{where}.output_chars"),
    )


def parse_prompt(raw: Any, where: str) -> Prompt:
    """One decoded JSON line -> ``Prompt``; ``DatasetError`` naming ``where`` if malformed."""
    if not isinstance(raw, dict):
        raise DatasetError(f"{where}: expected a JSON object")
    prompt, models = raw.get("prompt"), raw.get("models")
    if not isinstance(prompt, str) or not isinstance(models, dict):
        raise DatasetError(f"{where}: needs a string 'prompt' and an object 'models'")
    turns = raw.get("turns") or [prompt]
    if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
        raise DatasetError(f"{where}: 'turns' must be a list of strings")
    task = raw.get("task")
    return Prompt(
        id=str(raw.get("id", where)),
        task=task if isinstance(task, str) else None,
        turns=tuple(turns),
        labels={str(m): _label(v, f"{where}: models.{m}") for m, v in models.items()},
    )


def read_prompts(paths: Sequence[str | Path], limit: int | None = None) -> list[Prompt]:
    """Read JSON Lines files in order (blank lines skipped), up to ``limit`` prompts."""
    prompts: list[Prompt] = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if limit is not None and len(prompts) >= limit:
                    return prompts
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{where}: invalid JSON: {exc.msg}") from None
                prompts.append(parse_prompt(raw, where))
    return prompts


def data_models(prompts: Iterable[Prompt]) -> set[str]:
    """Every data model that has a label somewhere."""
    return {name for p in prompts for name in p.labels}
