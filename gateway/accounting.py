"""What a request cost, and what it would have cost on the route's reference model.

Prices are USD per million tokens from the live policy (which resolved them from the YAML or
from litellm's bundled price table). Cached input tokens are priced at the cached rate where one
is known; reasoning tokens are part of the completion tokens and priced as output, as providers
bill them. The baseline prices the same token counts at the reference model's rates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from policies.compiled import ModelEntry


@dataclass(frozen=True, slots=True)
class Usage:
    input: int = 0
    output: int = 0
    cached: int = 0
    reasoning: int = 0
    estimated: bool = False

    @property
    def total(self) -> int:
        return self.input + self.output


def usage_from(obj: Any) -> Usage | None:
    """Read an OpenAI ``usage`` object (dict); None when absent or malformed."""
    if not isinstance(obj, dict):
        return None
    try:
        prompt = int(obj.get("prompt_tokens") or 0)
        completion = int(obj.get("completion_tokens") or 0)
        pd = obj.get("prompt_tokens_details")
        cd = obj.get("completion_tokens_details")
        cached = int(pd.get("cached_tokens") or 0) if isinstance(pd, dict) else 0
        reasoning = int(cd.get("reasoning_tokens") or 0) if isinstance(cd, dict) else 0
    except (TypeError, ValueError):
        return None
    return Usage(prompt, completion, min(cached, prompt), reasoning)


def cost_usd(model: ModelEntry, usage: Usage) -> float:
    """USD for ``usage`` at ``model``'s prices."""
    cached_price = model.cached_input_usd_per_mtok
    if cached_price is None:
        cached_price = model.input_usd_per_mtok
    uncached = usage.input - usage.cached
    return (
        uncached * model.input_usd_per_mtok
        + usage.cached * cached_price
        + usage.output * model.output_usd_per_mtok
    ) / 1_000_000
