"""The routing decision: ``decide(policy, RouteInput, LiveStats) -> Decision``.

Pure, synchronous, no I/O; it runs on every request, so everything that can be is resolved
at compile time. How a route decides:

1. The requested name resolves to a route (``x-effgate-route`` wins when it names one;
   ``auto`` is the default route) or to a catalog model, which bypasses routing
   (``explicit_model``, no fallbacks).
2. The route's first matching rule may replace the quality bar, the candidates, or pin a
   model. A client's bar override is clamped to the route's bounds; a client's cost cap can
   only lower the route's.
3. A candidate is eligible when its capabilities cover the request's needs, the prompt plus
   the requested output fits its context window, its circuit is closed, and its expected
   cost is within the cap. P(acceptable) is the estimator's probability for that model on
   this request (``RouteInput.p``, by catalog id), else the IRT link
   sigmoid(discrimination * (skill - difficulty)) with the model's skill.
4. With a bar: the cheapest eligible model with P >= bar (``cheapest_above_bar``), else the
   highest P (``best_below_bar``); the rest follow as fallbacks, cheapest first among those
   clearing the bar, then by P. Without a bar: candidate order (``first_candidate``).
   A pinned model goes first when eligible (``pinned_by_rule``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from policies.compiled import CompiledPolicy, CompiledRule, ModelEntry
from router_models.irt import irt_p

Reason = Literal[
    "explicit_model", "cheapest_above_bar", "best_below_bar", "pinned_by_rule", "first_candidate"
]
Why = Literal["capabilities", "context", "circuit", "cost"]
Eligibility = Literal["ok", "capabilities", "context", "circuit", "cost"]

# The order the eligibility gates run in; NoEligibleModel reports the furthest one reached.
_GATES: tuple[Why, ...] = ("capabilities", "context", "circuit", "cost")
_RANK: dict[str, int] = {gate: i for i, gate in enumerate(_GATES)}


@dataclass(frozen=True, slots=True)
class RouteInput:
    """What ``decide`` needs to know about one request (built by the gateway)."""

    model: str  # what the client asked for: catalog id, route name or "auto"
    difficulty: float | None = None
    # the estimator's P(acceptable) per catalog id (learned per model); a model missing here
    # gets the IRT link of its skill and ``difficulty``
    p: Mapping[str, float] | None = None
    prompt_text: str = ""
    prompt_tokens: int = 0
    max_output_tokens: int | None = None
    needs: frozenset[str] = frozenset()  # subset of: tools vision json_schema streaming
    task: str | None = None
    route_override: str | None = None  # x-effgate-route
    quality_bar_override: float | None = None  # x-effgate-quality-bar
    max_cost_usd: float | None = None  # x-effgate-max-cost-usd
    # the caller's own bounds on the bar (a tenant's quality_bar), applied after the route's
    bar_bounds: tuple[float, float] | None = None


@dataclass(frozen=True, slots=True)
class Candidate:
    """One row of the decision table: a model, its P, its expected cost, and eligibility."""

    model: str
    p: float | None
    expected_cost_usd: float
    eligible: bool
    reason: Eligibility


@dataclass(frozen=True, slots=True)
class Decision:
    """Which model serves the request, the fallback chain, and why."""

    route: str | None
    model: str
    fallbacks: tuple[str, ...]
    reason: Reason
    quality_bar: float | None
    p: float | None
    difficulty: float | None
    rule: str | None
    reference_model: str | None
    candidates: tuple[Candidate, ...]


class LiveStats(Protocol):
    """What the gateway knows at run time about each upstream."""

    def circuit_open(self, model: str) -> bool:
        """True while the model's circuit breaker is open (do not send it traffic)."""
        ...

    def avg_output_tokens(self, route: str, model: str) -> float | None:
        """Recent mean output tokens of ``model`` on ``route`` (``""`` for explicit requests)."""
        ...


class NoLiveStats:
    """``LiveStats`` of a fresh process: every circuit closed, no output history."""

    def circuit_open(self, model: str) -> bool:
        """Never open."""
        return False

    def avg_output_tokens(self, route: str, model: str) -> float | None:
        """No history: the policy's default expected output tokens apply."""
        return None


class UnknownModel(LookupError):
    """The requested name is neither a catalog model, a route, nor ``auto``."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"unknown model or route {name!r}")


class NoEligibleModel(Exception):
    """No candidate can take the request. ``why`` is the furthest gate any candidate reached."""

    def __init__(self, why: Why, candidates: tuple[Candidate, ...]) -> None:
        self.why = why
        self.candidates = candidates
        rows = ", ".join(f"{c.model}: {c.reason}" for c in candidates)
        super().__init__(f"no eligible model ({why}): {rows}")


# P(acceptable answer) = 1 / (1 + exp(-a * (skill - difficulty))), without overflow, for floats
# (discrimination, skill, difficulty): the one IRT link, ``router_models.irt.irt_p``.
p_acceptable = irt_p


def decide(policy: CompiledPolicy, inp: RouteInput, stats: LiveStats) -> Decision:
    """Choose the model for one request; see the module docstring for the rules.

    Raises ``UnknownModel`` for a name the policy does not know, ``NoEligibleModel`` when no
    candidate can serve, and ``ValueError`` for a bar route called without a finite
    difficulty or probabilities (ask ``needs_difficulty`` first), a probability outside
    [0, 1], or a non-finite bar override.
    """
    d = inp.difficulty
    if d is not None and not math.isfinite(d):
        raise ValueError(f"difficulty must be finite, got {d}")
    target = None
    if inp.route_override is not None:
        target = policy.targets.get(inp.route_override)
        if target is not None and target.kind != "route":
            target = None
    if target is None:
        target = policy.targets.get(inp.model)
        if target is None:
            raise UnknownModel(inp.model)
    if target.kind == "model":
        return _explicit(policy, policy.models[target.name], inp, stats)
    route = policy.routes[target.name]
    rule = next((r for r in route.rules if _matches(r, inp)), None)
    entries, bar, pin = route.entries, route.quality_bar, None
    if rule is not None:
        entries = rule.entries if rule.entries is not None else entries
        bar = rule.quality_bar if rule.quality_bar is not None else bar
        pin = rule.model
        if pin is not None and all(e is not pin for e in entries):
            entries = (*entries, pin)
    override = inp.quality_bar_override
    if bar is not None and override is not None:
        if not math.isfinite(override):
            raise ValueError(f"quality bar override must be finite, got {override}")
        bar = min(max(override, route.min_quality_bar), route.max_quality_bar)
    if bar is not None and inp.bar_bounds is not None:
        bar = min(max(bar, inp.bar_bounds[0]), inp.bar_bounds[1])
    if bar is not None and d is None and inp.p is None:
        raise ValueError(f"route {route.name!r} has a quality bar: a difficulty is required")
    cap = route.max_cost_usd
    if inp.max_cost_usd is not None:
        cap = inp.max_cost_usd if cap is None else min(cap, inp.max_cost_usd)
    table = tuple(_candidate(policy, route.name, m, inp, cap, stats) for m in entries)
    eligible = [c for c in table if c.eligible]
    if not eligible:
        raise NoEligibleModel(_dominant(table), table)
    reason: Reason = "first_candidate"
    if bar is not None:
        above = sorted(
            (c for c in eligible if _p(c) >= bar),
            key=lambda c: (c.expected_cost_usd, -_p(c), c.model),
        )
        below = sorted(
            (c for c in eligible if _p(c) < bar),
            key=lambda c: (-_p(c), c.expected_cost_usd, c.model),
        )
        eligible = above + below
        reason = "cheapest_above_bar" if above else "best_below_bar"
    if pin is not None:
        pinned = [c for c in eligible if c.model == pin.id]
        if pinned:
            eligible = pinned + [c for c in eligible if c.model != pin.id]
            reason = "pinned_by_rule"
    chosen = eligible[0]
    return Decision(
        route=route.name,
        model=chosen.model,
        fallbacks=tuple(c.model for c in eligible[1:]),
        reason=reason,
        quality_bar=bar,
        p=chosen.p,
        difficulty=d,
        rule=rule.name if rule is not None else None,
        reference_model=route.reference_model,
        candidates=table,
    )


def _p(c: Candidate) -> float:
    # compile guarantees a skill for every model a bar route can choose, and decide() a
    # difficulty, so p is set on bar routes; -inf only keeps the type checker honest.
    return c.p if c.p is not None else -math.inf


def _matches(rule: CompiledRule, inp: RouteInput) -> bool:
    """All of the rule's conditions hold; the cheap ones are tested first."""
    if rule.tasks is not None and inp.task not in rule.tasks:
        return False
    if rule.has_tools is not None and ("tools" in inp.needs) != rule.has_tools:
        return False
    if rule.has_images is not None and ("vision" in inp.needs) != rule.has_images:
        return False
    if rule.min_prompt_tokens is not None and inp.prompt_tokens < rule.min_prompt_tokens:
        return False
    if rule.max_prompt_tokens is not None and inp.prompt_tokens > rule.max_prompt_tokens:
        return False
    if rule.keywords is not None and rule.keywords.search(inp.prompt_text) is None:
        return False
    return rule.regex is None or rule.regex.search(inp.prompt_text) is not None


def _candidate(
    policy: CompiledPolicy,
    route: str,
    m: ModelEntry,
    inp: RouteInput,
    cap: float | None,
    stats: LiveStats,
) -> Candidate:
    d = inp.difficulty
    p = inp.p.get(m.id) if inp.p is not None else None
    if p is None and d is not None and m.skill is not None:
        p = p_acceptable(policy.discrimination, m.skill, d)
    elif p is not None and not 0.0 <= p <= 1.0:
        raise ValueError(f"P(acceptable) of {m.id!r} must be in [0, 1], got {p}")
    out = stats.avg_output_tokens(route, m.id)
    if out is None:
        out = m.expected_output_tokens or policy.default_expected_output_tokens
    if inp.max_output_tokens is not None and out > inp.max_output_tokens:
        out = inp.max_output_tokens
    if m.max_output_tokens is not None and out > m.max_output_tokens:
        out = m.max_output_tokens
    cost = (inp.prompt_tokens * m.input_usd_per_mtok + out * m.output_usd_per_mtok) / 1e6
    reason: Eligibility = "ok"
    if not inp.needs <= m.capabilities:
        reason = "capabilities"
    elif inp.prompt_tokens + (inp.max_output_tokens or 0) > m.context_window:
        reason = "context"
    elif stats.circuit_open(m.id):
        reason = "circuit"
    elif cap is not None and cost > cap:
        reason = "cost"
    return Candidate(m.id, p, cost, reason == "ok", reason)


def _dominant(table: tuple[Candidate, ...]) -> Why:
    """The furthest gate reached: the candidate that came closest to serving says why."""
    return _GATES[max(_RANK[c.reason] for c in table if c.reason != "ok")]


def _explicit(policy: CompiledPolicy, m: ModelEntry, inp: RouteInput, stats: LiveStats) -> Decision:
    c = _candidate(policy, "", m, inp, inp.max_cost_usd, stats)
    if not c.eligible:
        raise NoEligibleModel(_dominant((c,)), (c,))
    return Decision(
        route=None,
        model=m.id,
        fallbacks=(),
        reason="explicit_model",
        quality_bar=None,
        p=c.p,
        difficulty=inp.difficulty,
        rule=None,
        reference_model=None,
        candidates=(c,),
    )
