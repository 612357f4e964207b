"""The compiled policy: the immutable ``CompiledPolicy``, its parts, and the lookups on it.

``policies.compile`` builds one per load; ``decide()`` and the gateway only read it. Catalog
models (``ModelEntry``) carry every price, limit and skill resolved; routes (``RouteEntry``)
their candidates, compiled rules and shadow evaluation; ``targets`` maps every name a client
may ask for. ``resolve`` turns such a name into a ``Target``, ``limits_for`` gives the input
limits of a resolved request, ``needs_difficulty`` says whether the estimator must run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from policies.schema import Provider


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-upstream deadlines, in seconds."""

    connect_s: float
    first_byte_s: float
    idle_s: float
    total_s: float


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """A catalog model with every price, limit and skill resolved."""

    id: str
    provider: Provider
    base_url: str | None
    upstream_model: str
    api_key_env: str | None
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    cached_input_usd_per_mtok: float | None
    context_window: int
    max_output_tokens: int | None
    expected_output_tokens: int | None
    skill: float | None
    capabilities: frozenset[str]
    local_gpus: tuple[int, ...]
    timeouts: Timeouts
    max_retries: int
    max_connections: int
    price_source: str  # "policy" or "litellm:<table key>"
    skill_source: str  # "policy", "estimator:<name>" or "none"


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One rule of a route, with its regex and keyword pattern compiled."""

    name: str
    tasks: frozenset[str] | None
    regex: re.Pattern[str] | None
    keywords: re.Pattern[str] | None
    has_tools: bool | None
    has_images: bool | None
    min_prompt_tokens: int | None
    max_prompt_tokens: int | None
    quality_bar: float | None
    candidates: tuple[str, ...] | None
    entries: tuple[ModelEntry, ...] | None  # the candidates' entries, same order
    model: ModelEntry | None  # the pinned model


@dataclass(frozen=True, slots=True)
class ShadowEntry:
    """A route's shadow evaluation with its models resolved (``ShadowSpec``)."""

    sample: float
    judge: ModelEntry
    models: tuple[ModelEntry, ...]
    rubric: str
    daily_usd: float
    max_output_tokens: int
    max_pending: int


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on a chat request's input (``LimitsSpec``); None is no cap. The gateway checks
    them with ``gateway.pipeline.check_limits`` before it routes."""

    max_messages: int | None = None
    max_chars: int | None = None
    max_tokens: int | None = None

    @property
    def active(self) -> bool:
        """Some cap is set (requests under no cap skip the check entirely)."""
        return not (
            self.max_messages is None and self.max_chars is None and self.max_tokens is None
        )

    def tighter(self, other: Limits | None) -> Limits:
        """Each cap the stricter of the two: a tenant's limits over a route's, say."""
        if other is None or other is self:
            return self
        return Limits(
            _min(self.max_messages, other.max_messages),
            _min(self.max_chars, other.max_chars),
            _min(self.max_tokens, other.max_tokens),
        )


def _min(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


NO_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """A route with its candidates resolved to catalog entries."""

    name: str
    candidates: tuple[str, ...]
    entries: tuple[ModelEntry, ...]  # the candidates' entries, same order
    quality_bar: float | None
    min_quality_bar: float
    max_quality_bar: float
    max_cost_usd: float | None
    reference_model: str
    rules: tuple[CompiledRule, ...]
    uses_quality_bar: bool  # the route or one of its rules sets a bar
    # every model the route may choose (candidates, rules' candidates and pins), in order
    scored: tuple[ModelEntry, ...] = ()
    shadow: ShadowEntry | None = None
    limits: Limits = NO_LIMITS  # the policy's limits with the route's own over them
    deadline_s: float | None = None  # the route's deadline_s, else the policy's


@dataclass(frozen=True, slots=True)
class Target:
    """What a requested name resolves to: a catalog model or a route."""

    kind: Literal["model", "route"]
    name: str


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """The live, immutable policy. ``models`` and ``routes`` are read-only mappings."""

    models: Mapping[str, ModelEntry]
    routes: Mapping[str, RouteEntry]
    default_route: str
    sha256: str
    version: int
    log_prompts: bool
    path: str
    discrimination: float
    default_expected_output_tokens: int
    budget_daily_usd: float | None
    targets: Mapping[str, Target]  # every model id, route name and "auto"
    smallest_context_window: int = 0  # of every catalog model: prompts far below it fit all
    limits: Limits = NO_LIMITS  # the policy-wide default: requests that name a catalog model
    any_limits: bool = False  # the policy or a route sets some limit (else nothing to check)
    deadline_s: float | None = None  # the policy's: requests that name a catalog model


def resolve(policy: CompiledPolicy, name: str, route_override: str | None = None) -> Target | None:
    """Resolve a requested name (catalog model, route, or ``auto``); None when unknown.

    ``route_override`` (the ``x-effgate-route`` header) wins when it names a route.
    """
    if route_override is not None:
        target = policy.targets.get(route_override)
        if target is not None and target.kind == "route":
            return target
    return policy.targets.get(name)


def limits_for(policy: CompiledPolicy, target: Target | None) -> Limits:
    """The input limits of a resolved request: its route's, else the policy's default."""
    if target is not None and target.kind == "route":
        return policy.routes[target.name].limits
    return policy.limits


def needs_difficulty(policy: CompiledPolicy, name: str, route_override: str | None = None) -> bool:
    """True when deciding for ``name`` uses a quality bar, so the estimator must run."""
    target = resolve(policy, name, route_override)
    return (
        target is not None
        and target.kind == "route"
        and policy.routes[target.name].uses_quality_bar
    )


def deadline_for(policy: CompiledPolicy, route: str | None) -> float | None:
    """Seconds a request on ``route`` (None or ``direct``: a catalog model named) may spend on
    its upstream calls before its answer starts; None: no deadline beyond each call's."""
    entry = policy.routes.get(route) if route is not None else None
    return entry.deadline_s if entry is not None else policy.deadline_s
