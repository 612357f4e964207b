"""Labelled prompts: the one parser of the shared JSONL format, and its price files.

Every source becomes a list of `Row`s: one prompt (as chat messages) with per-model
results (`router_models.records` makes them from gateway records; `policies.replay_data`
views them as replay prompts). `LabelMatrix` is the dense (prompts x models) view the IRT fit
works on.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
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


def _count(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise DataError(f"{where}: expected a non-negative integer or null, got {value!r}")


def _cost(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError(f"{where}: expected a number or null, got {value!r}")
    return float(value) if math.isfinite(value) else None


def _result(raw: Any, where: str) -> Result:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected an object")
    score = raw.get("score")
    if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1:
        raise DataError(f"{where}.score: expected a number in [0, 1], got {score!r}")
    return Result(
        score=float(score),
        cost_usd=_cost(raw.get("cost_usd"), f"{where}.cost_usd"),
        input_tokens=_count(raw.get("input_tokens"), f"{where}.input_tokens"),
        output_tokens=_count(raw.get("output_tokens"), f"{where}.output_tokens"),
        output_chars=_count(raw.get("output_chars"), f"{where}.output_chars"),
    )


def _text(value: Any, key: str, where: str, default: str) -> str:
    if value is None:
        return default
    if isinstance(value, str):
        return value
    raise DataError(f"{where}: {key!r} must be a string, got {value!r}")


def parse_row(obj: Any, where: str = "row") -> Row:
    """One decoded line of the shared format -> Row; DataError naming `where` if malformed.

    The one parser of the format (`effgate train`/`eval` and `effgate eval --policy` both read
    through it). `prompt` and `models` are required; `id`, `source` and `task`, which the format
    also requires, default to `where`, "" and "" so hand-written replay files may leave them out.
    """
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object")
    prompt, models = obj.get("prompt"), obj.get("models")
    if not isinstance(prompt, str) or not isinstance(models, dict):
        raise DataError(f"{where}: needs a string 'prompt' and an object 'models'")
    turns = obj.get("turns") or [prompt]
    if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
        raise DataError(f"{where}: 'turns' must be a list of strings")
    row_id = obj.get("id", where)
    return Row(
        id=row_id if isinstance(row_id, str) else str(row_id),
        source=_text(obj.get("source"), "source", where, ""),
        task=_text(obj.get("task"), "task", where, ""),
        messages=tuple({"role": "user", "content": t} for t in turns),
        results={str(m): _result(v, f"{where}: models.{m}") for m, v in models.items()},
        prompt_chars=sum(len(t) for t in turns),
    )


def read_rows(paths: Iterable[str | Path], limit: int | None = None) -> Iterator[Row]:
    """Rows of shared-format files in order (blank lines skipped), at most `limit` of them.
    A bad line raises DataError naming its file and line."""
    count = 0
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if limit is not None and count >= limit:
                    return
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{where}: invalid JSON: {exc.msg}") from None
                yield parse_row(obj, where)
                count += 1


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
    try:
        rows = tuple(read_rows(paths))
    except DataError as exc:
        raise DataError(f"bad row: {exc}") from None
    prices: dict[str, Price] = {}
    for path in paths:
        prices.update(load_prices(prices_path(path)))
    return Dataset(rows=rows, prices=prices, files=tuple(str(p) for p in paths))


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
