"""The policy YAML contract, version 1: pydantic models that validate one parsed file.

This is phase one of loading (see ``policies.loader``): shapes, types and ranges only,
strict (``extra="forbid"``, no string-to-number or number-to-bool coercion) and frozen.
Cross-references (does a route's candidate exist? is the default route declared?) are
phase two, in ``policies.compile``.

A minimal policy::

    version: 1
    models:
      - {id: small, provider: openai, base_url: "http://127.0.0.1:9001/v1",
         input_usd_per_mtok: 0.15, output_usd_per_mtok: 0.60, context_window: 128000}
    routes:
      - {name: auto, candidates: [small]}
    default_route: auto
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

T = TypeVar("T")

Provider = Literal[
    "openai", "anthropic", "gemini", "vertex_ai", "bedrock", "azure", "mistral", "cohere"
]
"""``openai`` is any OpenAI-compatible server (OpenAI, vLLM, SGLang, Ollama, ...); the
others are litellm providers, which the gateway translates through litellm."""

Capability = Literal["tools", "vision", "json_schema", "streaming"]
ALL_CAPABILITIES: frozenset[str] = frozenset({"tools", "vision", "json_schema", "streaming"})

# Ids double as Prometheus label values and header values: keep them plain.
Name = Annotated[
    str, Field(strict=True, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][\w.:@/+-]*$")
]
Text = Annotated[str, Field(strict=True, min_length=1)]
EnvName = Annotated[str, Field(strict=True, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Url = Annotated[str, Field(strict=True, pattern=r"^https?://[^\s/]+\S*$")]
Price = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0)]
Positive = Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0)]
Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Probability = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0, le=1)]
Count = Annotated[int, Field(strict=True, ge=0)]
PositiveCount = Annotated[int, Field(strict=True, gt=0)]
Flag = Annotated[bool, Field(strict=True)]


def _compiles(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
    return pattern


def _non_empty(items: tuple[T, ...]) -> tuple[T, ...]:
    # NOTE: not Field(min_length=1): pydantic-core then also reports "too short" when an
    # item fails validation, which misleads ops.
    if not items:
        raise ValueError("must list at least one item")
    return items


Regex = Annotated[str, Field(strict=True, min_length=1), AfterValidator(_compiles)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BudgetSpec(_Spec):
    """The deployment's spend limit, over every tenant: enforced like a tenant's budget (each
    request reserves its worst case first; 429 ``budget_exceeded`` past it) and exported as
    ``effgate_budget_usd`` for the budget-burn alerts."""

    daily_usd: Positive


class TimeoutsSpec(_Spec):
    """Per-upstream deadlines, in seconds."""

    connect_s: Positive = 5.0
    first_byte_s: Positive = 60.0
    idle_s: Positive = 30.0
    total_s: Positive = 600.0


class ModelSpec(_Spec):
    """One catalog entry: an upstream model the gateway may call."""

    id: Name
    provider: Provider
    base_url: Url | None = None
    upstream_model: Text | None = None
    api_key_env: EnvName | None = None
    input_usd_per_mtok: Price | None = None
    output_usd_per_mtok: Price | None = None
    cached_input_usd_per_mtok: Price | None = None
    context_window: PositiveCount | None = None
    max_output_tokens: PositiveCount | None = None
    # cold-start output tokens per request for cost estimates (reasoning models bill their
    # hidden reasoning as output); replaced by the running average once traffic flows
    expected_output_tokens: PositiveCount | None = None
    skill: Finite | None = None
    capabilities: tuple[Capability, ...] | None = None
    local_gpus: tuple[Count, ...] = ()
    timeouts: TimeoutsSpec = TimeoutsSpec()
    max_retries: Annotated[int, Field(strict=True, ge=0, le=10)] = 2
    max_connections: PositiveCount = 100

    @model_validator(mode="after")
    def _openai_needs_base_url(self) -> ModelSpec:
        if self.provider == "openai" and self.base_url is None:
            raise ValueError(
                "base_url is required for provider openai (any OpenAI-compatible server)"
            )
        return self


class WhenSpec(_Spec):
    """Conditions of a rule; every condition given must hold (an empty ``when`` always does)."""

    task: Annotated[tuple[Text, ...], AfterValidator(_non_empty)] | None = None
    prompt_regex: Regex | None = None
    keywords: Annotated[tuple[Text, ...], AfterValidator(_non_empty)] | None = None
    has_tools: Flag | None = None
    has_images: Flag | None = None
    min_prompt_tokens: Count | None = None
    max_prompt_tokens: Count | None = None

    @model_validator(mode="after")
    def _token_bounds_ordered(self) -> WhenSpec:
        lo, hi = self.min_prompt_tokens, self.max_prompt_tokens
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"min_prompt_tokens ({lo}) is above max_prompt_tokens ({hi})")
        return self


class RuleSpec(_Spec):
    """An ordered override inside a route: the first rule whose ``when`` matches applies."""

    name: Name | None = None
    when: WhenSpec = WhenSpec()
    quality_bar: Probability | None = None
    candidates: Annotated[tuple[Name, ...], AfterValidator(_non_empty)] | None = None
    model: Name | None = None

    @model_validator(mode="after")
    def _sets_something(self) -> RuleSpec:
        if self.quality_bar is None and self.candidates is None and self.model is None:
            raise ValueError("a rule must set at least one of quality_bar, candidates, model")
        return self


class ShadowSpec(_Spec):
    """Shadow evaluation of a route: a sampled share of its requests is also sent, after the
    client has its answer, to comparison models; a judge model grades the served and the
    shadow answers, and the grades become labels for both models."""

    sample: Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0, le=1)]
    judge: Name
    # default: the route's reference model (a comparison with itself is skipped)
    models: Annotated[tuple[Name, ...], AfterValidator(_non_empty)] | None = None
    rubric: Text | None = None  # default: policies.compile.DEFAULT_RUBRIC
    daily_usd: Positive
    max_output_tokens: PositiveCount = 1024  # cap on each shadow answer
    max_pending: PositiveCount = 64  # evaluations queued per replica; more are dropped, counted


class LimitsSpec(_Spec):
    """Caps on a chat request's input, enforced before routing (400 past any of them). A
    route's ``limits`` override the policy's field by field; a field left out inherits it."""

    max_messages: PositiveCount | None = None  # messages in the conversation
    max_chars: PositiveCount | None = None  # text characters: contents, tool calls, tools
    max_tokens: PositiveCount | None = None  # the request's max_tokens / max_completion_tokens


class RouteSpec(_Spec):
    """A named routing recipe: candidates, an optional quality bar, and rules."""

    name: Name
    candidates: Annotated[tuple[Name, ...], AfterValidator(_non_empty)]
    quality_bar: Probability | None = None
    min_quality_bar: Probability = 0.0
    max_quality_bar: Probability = 1.0
    max_cost_usd: Positive | None = None
    reference_model: Name | None = None
    rules: tuple[RuleSpec, ...] = ()
    shadow: ShadowSpec | None = None
    limits: LimitsSpec | None = None
    # the most a request's upstream calls may take, retries and fallbacks included, before
    # its answer starts (a stream's first token, a JSON answer whole); default: the policy's
    deadline_s: Positive | None = None


class PolicyFile(_Spec):
    """The whole policy file, as written by ops (version 1)."""

    version: Literal[1]
    log_prompts: Flag = False
    budget: BudgetSpec | None = None
    default_expected_output_tokens: PositiveCount = 256
    # the default input limits of every route (and of requests naming a catalog model)
    limits: LimitsSpec | None = None
    # the default deadline_s of every route (and of requests naming a catalog model); none:
    # each call's timeouts.* and max_retries bound a request
    deadline_s: Positive | None = None
    models: Annotated[tuple[ModelSpec, ...], AfterValidator(_non_empty)]
    routes: Annotated[tuple[RouteSpec, ...], AfterValidator(_non_empty)]
    default_route: Name
