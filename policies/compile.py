"""Phase two of loading: a validated ``PolicyFile`` -> an immutable ``CompiledPolicy``.

Everything the per-request ``decide()`` needs is resolved here, once: references between
routes and models, prices and context windows (from the file, else from litellm's bundled
price table), model skills (from the file, else from the estimator's fitted skills),
rule regexes, and a name -> target table for resolving what a client asked for.
``compile_policy`` is pure: it raises ``PolicyCompileError`` listing every problem found.
What it builds, and the lookups on it, are ``policies.compiled``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from policies.compiled import (
    NO_LIMITS,
    CompiledPolicy,
    CompiledRule,
    Limits,
    ModelEntry,
    RouteEntry,
    ShadowEntry,
    Target,
    Timeouts,
)
from policies.errors import Issue, Loc, PolicyCompileError
from policies.prices import lookup
from policies.schema import (
    ALL_CAPABILITIES,
    LimitsSpec,
    ModelSpec,
    PolicyFile,
    RouteSpec,
    RuleSpec,
    ShadowSpec,
    WhenSpec,
)

AUTO = "auto"
"""A requested model named ``auto`` means the policy's default route."""

DEFAULT_RUBRIC = (
    "Grade each answer to the conversation above on its own merits: is it correct, complete "
    "and useful for what the user asked, and does it follow the user's instructions and any "
    "format they required? 1.0 means a user would accept it as is, 0.0 means it is wrong or "
    "useless; use values in between for partly acceptable answers. Length and style do not "
    "earn points by themselves."
)
"""The judge's rubric when a route's ``shadow`` names none (shadow evaluation, docs/policies.md)."""


def _limits(spec: LimitsSpec | None, base: Limits) -> Limits:
    """``spec`` over ``base``, field by field (a field ``spec`` leaves out is inherited)."""
    if spec is None:
        return base
    return Limits(
        spec.max_messages if spec.max_messages is not None else base.max_messages,
        spec.max_chars if spec.max_chars is not None else base.max_chars,
        spec.max_tokens if spec.max_tokens is not None else base.max_tokens,
    )


def compile_policy(
    spec: PolicyFile,
    *,
    skills: Mapping[str, float],
    discrimination: float,
    sha256: str = "",
    path: str = "",
    price_table: Mapping[str, Any] | None = None,
) -> CompiledPolicy:
    """Cross-check ``spec`` and build the ``CompiledPolicy``.

    ``skills`` are the estimator's fitted skills (matched to a model by id, then by
    upstream_model, case-insensitively); a model's own ``skill:`` wins. A skill is required
    only for models that a route with a quality bar may choose. ``price_table`` defaults to
    litellm's bundled table. Raises ``PolicyCompileError`` with every problem found.
    """
    if not (math.isfinite(discrimination) and discrimination > 0):
        raise ValueError(f"discrimination must be a positive finite number, got {discrimination}")
    issues: list[Issue] = []
    lowered = {name.lower(): (name, value) for name, value in skills.items()}
    models: dict[str, ModelEntry] = {}
    index: dict[str, int] = {}
    for i, model in enumerate(spec.models):
        loc: Loc = ("models", i)
        if model.id in index:
            issues.append(Issue((*loc, "id"), f"duplicate model id {model.id!r}"))
            continue
        if model.id == AUTO:
            issues.append(Issue((*loc, "id"), "'auto' is reserved: it means the default route"))
            continue
        index[model.id] = i
        entry = _model(model, loc, lowered, price_table, issues)
        if entry is not None:
            models[model.id] = entry
    limits = _limits(spec.limits, NO_LIMITS)
    routes: dict[str, RouteEntry] = {}
    route_names: set[str] = set()
    for i, route in enumerate(spec.routes):
        loc = ("routes", i)
        clash = None
        if route.name in route_names:
            clash = f"duplicate route name {route.name!r}"
        elif route.name in index:
            clash = f"{route.name!r} is also a model id; routes and models share one namespace"
        elif route.name == AUTO and spec.default_route != AUTO:
            clash = "a route named 'auto' must be the default_route"
        if clash is not None:
            issues.append(Issue((*loc, "name"), clash))
        route_names.add(route.name)
        compiled = _route(route, loc, models, index, issues, limits, spec.deadline_s)
        if compiled is not None and clash is None:
            routes[route.name] = compiled
    if spec.default_route not in {r.name for r in spec.routes}:
        declared = ", ".join(r.name for r in spec.routes)
        issues.append(
            Issue(
                ("default_route",), f"unknown route {spec.default_route!r} (declared: {declared})"
            )
        )
    _check_skills(spec, models, index, lowered, issues)
    if issues:
        raise PolicyCompileError(issues)
    targets = {m: Target("model", m) for m in models} | {r: Target("route", r) for r in routes}
    targets[AUTO] = Target("route", spec.default_route)
    return CompiledPolicy(
        models=MappingProxyType(models),
        routes=MappingProxyType(routes),
        default_route=spec.default_route,
        sha256=sha256,
        version=spec.version,
        log_prompts=spec.log_prompts,
        path=path,
        discrimination=discrimination,
        default_expected_output_tokens=spec.default_expected_output_tokens,
        budget_daily_usd=spec.budget.daily_usd if spec.budget is not None else None,
        targets=MappingProxyType(targets),
        smallest_context_window=min((m.context_window for m in models.values()), default=0),
        limits=limits,
        any_limits=limits.active or any(r.limits.active for r in routes.values()),
        deadline_s=spec.deadline_s,
    )


def _model(
    model: ModelSpec,
    loc: Loc,
    lowered: Mapping[str, tuple[str, float]],
    price_table: Mapping[str, Any] | None,
    issues: list[Issue],
) -> ModelEntry | None:
    upstream = model.upstream_model or model.id
    found = lookup(model.provider, upstream, price_table)
    inp, out = model.input_usd_per_mtok, model.output_usd_per_mtok
    cached, window = model.cached_input_usd_per_mtok, model.context_window
    max_out, source = model.max_output_tokens, "policy"
    if found is not None:
        if inp is None or out is None:
            source = f"litellm:{found.key}"
        inp = found.input_usd_per_mtok if inp is None else inp
        out = found.output_usd_per_mtok if out is None else out
        cached = found.cached_input_usd_per_mtok if cached is None else cached
        window = found.context_window if window is None else window
        max_out = found.max_output_tokens if max_out is None else max_out
    missing = [
        f for f, v in (("input_usd_per_mtok", inp), ("output_usd_per_mtok", out)) if v is None
    ]
    if missing:
        issues.append(
            Issue(
                loc,
                f"no price for {upstream!r} in the policy or litellm's price "
                f"table: set {' and '.join(missing)}",
            )
        )
    if window is None:
        issues.append(
            Issue(
                loc,
                f"no context window for {upstream!r} in the policy or "
                "litellm's price table: set context_window",
            )
        )
    if inp is None or out is None or window is None:
        return None
    skill, skill_source = model.skill, "policy"
    if skill is None:
        match = lowered.get(model.id.lower()) or lowered.get(upstream.lower())
        skill, skill_source = (match[1], f"estimator:{match[0]}") if match else (None, "none")
    t = model.timeouts
    return ModelEntry(
        id=model.id,
        provider=model.provider,
        base_url=model.base_url,
        upstream_model=upstream,
        api_key_env=model.api_key_env,
        input_usd_per_mtok=inp,
        output_usd_per_mtok=out,
        cached_input_usd_per_mtok=cached,
        context_window=window,
        max_output_tokens=max_out,
        expected_output_tokens=model.expected_output_tokens,
        skill=skill,
        capabilities=(
            ALL_CAPABILITIES if model.capabilities is None else frozenset(model.capabilities)
        ),
        local_gpus=model.local_gpus,
        timeouts=Timeouts(t.connect_s, t.first_byte_s, t.idle_s, t.total_s),
        max_retries=model.max_retries,
        max_connections=model.max_connections,
        price_source=source,
        skill_source=skill_source,
    )


def _refs(
    names: tuple[str, ...],
    loc: Loc,
    models: Mapping[str, ModelEntry],
    index: Mapping[str, int],
    issues: list[Issue],
) -> tuple[ModelEntry, ...] | None:
    """Resolve model ids; report unknown or repeated ones. None if any failed."""
    ok = True
    for k, name in enumerate(names):
        if name not in index:
            issues.append(
                Issue((*loc, k), f"unknown model {name!r} (declared: {', '.join(index)})")
            )
            ok = False
        elif name in names[:k]:
            issues.append(Issue((*loc, k), f"model {name!r} is listed twice"))
            ok = False
    if not ok or any(n not in models for n in names):
        return None
    return tuple(models[n] for n in names)


def _route(
    route: RouteSpec,
    loc: Loc,
    models: Mapping[str, ModelEntry],
    index: Mapping[str, int],
    issues: list[Issue],
    limits: Limits = NO_LIMITS,
    deadline_s: float | None = None,
) -> RouteEntry | None:
    before = len(issues)
    entries = _refs(route.candidates, (*loc, "candidates"), models, index, issues)
    lo, hi = route.min_quality_bar, route.max_quality_bar
    if lo > hi:
        issues.append(
            Issue(
                (*loc, "min_quality_bar"), f"min_quality_bar ({lo}) is above max_quality_bar ({hi})"
            )
        )
    bars = [((*loc, "quality_bar"), route.quality_bar)]
    bars += [((*loc, "rules", j, "quality_bar"), r.quality_bar) for j, r in enumerate(route.rules)]
    for bar_loc, bar in bars:
        if bar is not None and lo <= hi and not lo <= bar <= hi:
            issues.append(
                Issue(
                    bar_loc,
                    f"quality bar {bar} is outside [min_quality_bar {lo}, max_quality_bar {hi}]",
                )
            )
    rules = []
    for j, rule in enumerate(route.rules):
        rloc = (*loc, "rules", j)
        rule_entries = None
        if rule.candidates is not None:
            rule_entries = _refs(rule.candidates, (*rloc, "candidates"), models, index, issues)
        pinned = None
        if rule.model is not None and rule.model not in index:
            issues.append(Issue((*rloc, "model"), f"unknown model {rule.model!r}"))
        elif rule.model is not None:
            pinned = models.get(rule.model)
        if len(issues) == before:
            rules.append(_rule(rule, f"rules[{j}]", rule_entries, pinned))
    reference = route.reference_model
    if reference is not None and reference not in index:
        issues.append(Issue((*loc, "reference_model"), f"unknown model {reference!r}"))
    shadow = None
    if route.shadow is not None:
        shadow = _shadow(route.shadow, (*loc, "shadow"), models, index, issues)
    if len(issues) > before or entries is None:
        return None
    if reference is None:  # the most expensive candidate, by input + output price
        reference = max(entries, key=lambda m: m.input_usd_per_mtok + m.output_usd_per_mtok).id
    scored: dict[str, ModelEntry] = {m.id: m for m in entries}
    for r in rules:
        scored.update((m.id, m) for m in (*(r.entries or ()), *((r.model,) if r.model else ())))
    if shadow is not None and not shadow.models:
        ref_entry = models[reference]
        shadow = replace(shadow, models=(ref_entry,))
    return RouteEntry(
        name=route.name,
        candidates=route.candidates,
        entries=entries,
        quality_bar=route.quality_bar,
        min_quality_bar=lo,
        max_quality_bar=hi,
        max_cost_usd=route.max_cost_usd,
        reference_model=reference,
        rules=tuple(rules),
        uses_quality_bar=any(bar is not None for _, bar in bars),
        scored=tuple(scored.values()),
        shadow=shadow,
        limits=_limits(route.limits, limits),
        deadline_s=route.deadline_s if route.deadline_s is not None else deadline_s,
    )


def _shadow(
    spec: ShadowSpec,
    loc: Loc,
    models: Mapping[str, ModelEntry],
    index: Mapping[str, int],
    issues: list[Issue],
) -> ShadowEntry | None:
    """Resolve a route's shadow models and judge; ``models`` left empty means the reference
    model, filled in by the caller once it is known."""
    before = len(issues)
    judge = None
    if spec.judge not in index:
        issues.append(Issue((*loc, "judge"), f"unknown model {spec.judge!r}"))
    else:
        judge = models.get(spec.judge)
    shadow_models: tuple[ModelEntry, ...] | None = ()
    if spec.models is not None:
        shadow_models = _refs(spec.models, (*loc, "models"), models, index, issues)
    if len(issues) > before or judge is None or shadow_models is None:
        return None
    return ShadowEntry(
        sample=spec.sample,
        judge=judge,
        models=shadow_models,
        rubric=spec.rubric or DEFAULT_RUBRIC,
        daily_usd=spec.daily_usd,
        max_output_tokens=spec.max_output_tokens,
        max_pending=spec.max_pending,
    )


def _rule(
    rule: RuleSpec,
    default_name: str,
    entries: tuple[ModelEntry, ...] | None,
    pinned: ModelEntry | None,
) -> CompiledRule:
    when: WhenSpec = rule.when
    keywords = None
    if when.keywords is not None:
        # NOTE: lookarounds, not \b, so keywords that start or end with a symbol ("c++") match.
        alternatives = "|".join(re.escape(k) for k in when.keywords)
        keywords = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
    return CompiledRule(
        name=rule.name or default_name,
        tasks=frozenset(when.task) if when.task is not None else None,
        regex=re.compile(when.prompt_regex) if when.prompt_regex is not None else None,
        keywords=keywords,
        has_tools=when.has_tools,
        has_images=when.has_images,
        min_prompt_tokens=when.min_prompt_tokens,
        max_prompt_tokens=when.max_prompt_tokens,
        quality_bar=rule.quality_bar,
        candidates=rule.candidates,
        entries=entries,
        model=pinned,
    )


def _check_skills(
    spec: PolicyFile,
    models: Mapping[str, ModelEntry],
    index: Mapping[str, int],
    lowered: Mapping[str, tuple[str, float]],
    issues: list[Issue],
) -> None:
    """A model that a route with a quality bar may choose needs a skill to compute P."""
    reported: set[str] = set()
    known = ", ".join(sorted(name for name, _ in lowered.values())[:12]) or "none"
    for route in spec.routes:
        if route.quality_bar is None and all(r.quality_bar is None for r in route.rules):
            continue
        names = list(route.candidates)
        for rule in route.rules:
            names += list(rule.candidates or ()) + ([rule.model] if rule.model else [])
        for name in names:
            entry = models.get(name)
            if entry is None or entry.skill is not None or name in reported:
                continue
            reported.add(name)
            issues.append(
                Issue(
                    ("models", index[name], "skill"),
                    (
                        f"model {name!r} has no skill, and route {route.name!r} uses a quality "
                        f"bar: set skill, or name it like an estimator model (known: {known})"
                    ),
                )
            )
