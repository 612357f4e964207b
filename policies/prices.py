"""Prices and context windows from the table litellm bundles, read without importing litellm.

``import litellm`` takes seconds and may try to download a price map, so we only locate the
package on disk (``importlib.util.find_spec`` does not import it) and read its
``model_prices_and_context_window_backup.json``. The table is parsed once per process.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TABLE_FILE = "model_prices_and_context_window_backup.json"


@dataclass(frozen=True, slots=True)
class TableEntry:
    """What the price table knows about one model (USD per million tokens)."""

    key: str
    input_usd_per_mtok: float | None
    output_usd_per_mtok: float | None
    cached_input_usd_per_mtok: float | None
    context_window: int | None
    max_output_tokens: int | None


def load_table(package: str = "litellm") -> Mapping[str, Any]:
    """Parse the price table bundled with ``package``; empty when it is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return {}
    for location in spec.submodule_search_locations:
        path = Path(location) / TABLE_FILE
        if path.is_file():
            table = json.loads(path.read_bytes())
            return table if isinstance(table, dict) else {}
    return {}


@functools.cache
def bundled_table() -> Mapping[str, Any]:
    """The litellm table, parsed on first use and kept for the life of the process."""
    return load_table()


def _per_mtok(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        # NOTE: rounded so 1.5e-07 per token reads back as 0.15, not 0.15000000000000002
        return round(float(value) * 1_000_000, 9)
    return None


def _tokens(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def lookup(
    provider: str, upstream_model: str, table: Mapping[str, Any] | None = None
) -> TableEntry | None:
    """Find ``provider/upstream_model``, then ``upstream_model``, in the price table.

    The provider-prefixed key goes first because it is the more specific one: the table
    lists ``gemini-2.5-flash`` under Vertex AI and ``gemini/gemini-2.5-flash`` for the
    Gemini API, and Azure's prices under ``azure/...``.
    """
    table = bundled_table() if table is None else table
    for key in (f"{provider}/{upstream_model}", upstream_model):
        raw = table.get(key)
        if key == "sample_spec" or not isinstance(raw, dict):
            continue
        return TableEntry(
            key=key,
            input_usd_per_mtok=_per_mtok(raw.get("input_cost_per_token")),
            output_usd_per_mtok=_per_mtok(raw.get("output_cost_per_token")),
            cached_input_usd_per_mtok=_per_mtok(raw.get("cache_read_input_token_cost")),
            context_window=_tokens(raw.get("max_input_tokens")) or _tokens(raw.get("max_tokens")),
            max_output_tokens=_tokens(raw.get("max_output_tokens")),
        )
    return None
