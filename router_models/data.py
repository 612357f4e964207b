"""Readers for labelled prompts: the shared JSONL format, its price files, gateway records.

Every source becomes a list of `Row`s: one prompt (as chat messages) with per-model
results. `LabelMatrix` is the dense (prompts x models) view the IRT fit works on.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

CHARS_PER_TOKEN = 4.0
# output length assumed when a file gives neither cost, tokens nor output characters
DEFAULT_OUTPUT_TOKENS = 256.0


class DataError(ValueError):
    """A data or records file that cannot be read as documented."""


@dataclass(frozen=True, slots=True)
class Result:
    """One model's outcome on one prompt."""

    score: float
    cost_usd: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    output_chars: int | None = None


@dataclass(frozen=True, slots=True)
class Row:
    """One labelled prompt."""

    id: str
    source: str
    task: str
    messages: tuple[Mapping[str, Any], ...]
    results: Mapping[str, Result]
    prompt_chars: int = 0


@dataclass(frozen=True, slots=True)
class Price:
    input_usd_per_mtok: float
    output_usd_per_mtok: float


@dataclass(frozen=True, slots=True)
class Dataset:
    rows: tuple[Row, ...]
    prices: Mapping[str, Price] = field(default_factory=dict)
    files: tuple[str, ...] = ()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def parse_row(obj: Mapping[str, Any]) -> Row:
    """One line of the shared format -> Row (raises DataError on a bad line)."""
    try:
        prompt = obj["prompt"]
        turns = obj.get("turns") or [prompt]
        results: dict[str, Result] = {}
        for name, res in obj["models"].items():
            score = float(res["score"])
            if not (math.isfinite(score) and 0.0 <= score <= 1.0):
                raise DataError(f"score {score!r} outside [0, 1]")
            results[str(name)] = Result(
                score=score,
                cost_usd=_opt_float(res.get("cost_usd")),
                input_tokens=_opt_int(res.get("input_tokens")),
                output_tokens=_opt_int(res.get("output_tokens")),
                output_chars=_opt_int(res.get("output_chars")),
            )
        messages = tuple({"role": "user", "content": str(t)} for t in turns)
        return Row(
            id=str(obj["id"]),
            source=str(obj["source"]),
            task=str(obj["task"]),
            messages=messages,
            results=results,
            prompt_chars=sum(len(str(t)) for t in turns),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise DataError(f"bad row {obj.get('id', '?')!r}: {exc}") from exc


def load_prices(path: Path) -> dict[str, Price]:
    """Prices from `<name>.models.json`; models without both prices are left out."""
    if not path.exists():
        return {}
    raw = json.loads(path.read_text(encoding="utf-8"))
    prices: dict[str, Price] = {}
    for name, info in raw.items():
        pin, pout = info.get("input_usd_per_mtok"), info.get("output_usd_per_mtok")
        if pin is not None and pout is not None:
            prices[name] = Price(float(pin), float(pout))
    return prices


def prices_path(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".jsonl") + ".models.json")


def load_dataset(paths: Sequence[Path]) -> Dataset:
    """Rows and prices from one or more shared-format files."""
    rows: list[Row] = []
    prices: dict[str, Price] = {}
    for path in paths:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: not JSON: {exc}") from exc
                rows.append(parse_row(obj))
        prices.update(load_prices(prices_path(path)))
    return Dataset(rows=tuple(rows), prices=prices, files=tuple(str(p) for p in paths))


def prompt_cost(row: Row, model: str, prices: Mapping[str, Price]) -> float | None:
    """Cost of `model` on `row`: measured, else estimated from tokens or characters."""
    res = row.results[model]
    if res.cost_usd is not None:
        return res.cost_usd
    price = prices.get(model)
    if price is None:
        return None
    tin = res.input_tokens if res.input_tokens is not None else row.prompt_chars / CHARS_PER_TOKEN
    if res.output_tokens is not None:
        tout = float(res.output_tokens)
    elif res.output_chars is not None:
        tout = res.output_chars / CHARS_PER_TOKEN
    else:
        tout = DEFAULT_OUTPUT_TOKENS
    return (tin * price.input_usd_per_mtok + tout * price.output_usd_per_mtok) / 1e6


@dataclass(frozen=True, slots=True)
class LabelMatrix:
    """Scores as a dense matrix; `mask` marks the (prompt, model) pairs that have a label."""

    models: tuple[str, ...]
    scores: npt.NDArray[np.float64]
    mask: npt.NDArray[np.bool_]


def label_matrix(rows: Iterable[Row], models: Sequence[str] | None = None) -> LabelMatrix:
    rows = list(rows)
    names = (
        tuple(models) if models is not None else tuple(sorted({m for r in rows for m in r.results}))
    )
    index = {m: j for j, m in enumerate(names)}
    scores = np.zeros((len(rows), len(names)))
    mask = np.zeros((len(rows), len(names)), dtype=bool)
    for i, row in enumerate(rows):
        for m, res in row.results.items():
            j = index.get(m)
            if j is not None:
                scores[i, j] = res.score
                mask[i, j] = True
    return LabelMatrix(models=names, scores=scores, mask=mask)
