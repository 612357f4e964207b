"""The endpoints' request path: each function turns one parsed request into a reply.

    chat:        validate -> check_limits (the route's input caps)
                 -> route_input (features, difficulty when a bar is in play)
                 -> make_decision (policies.decide) -> forward.forward (retries, fallbacks)
                 -> a priced JSON Reply, or a RelayResponse for a stream
    embeddings:  validate -> the named catalog model -> forward.forward
    explain:     validate -> check_limits -> route_input -> make_decision
                 -> the decision as JSON, no call
    feedback:    validate -> Accountant.feedback (join to the served request)
    models / model: the catalog and route names

Every function takes ``(state, exchange, call)``, returns a ``Reply`` or ``RelayResponse`` and
raises a ``GatewayError`` for anything else; ``gateway.lifecycle.serve`` owns the rest
(authentication, body, outcome, rendering errors, the one ``finish``). No HTTP types here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from gateway.errors import (
    ArrayTooLong,
    ContextLengthExceeded,
    Forbidden,
    GatewayError,
    IntegerTooLarge,
    InvalidRequest,
    ModelNotFound,
    NoHealthyUpstream,
    RequestNotFound,
    StoreUnavailable,
    TooDeep,
)
from gateway.exchange import Exchange
from gateway.explain import explain_body, models_body
from gateway.forward import forward
from gateway.kv import KVUnavailable
from gateway.lifecycle import Call
from gateway.protocol import ChatCompletionRequest, EmbeddingRequest, FeedbackRequest
from gateway.relay import RelayResponse
from gateway.state import AppState
from gateway.tenants import Tenant
from gateway.upstreams.base import Reply
from policies.compiled import CompiledPolicy, Limits, limits_for, resolve
from policies.engine import Decision, NoEligibleModel, RouteInput, UnknownModel, decide
from router_models.features import prompt_text

M = TypeVar("M", bound=BaseModel)


async def chat(state: AppState, ex: Exchange, call: Call) -> Reply | RelayResponse:
    req = validate(ChatCompletionRequest, call.body)
    ex.stream = bool(req.stream)
    mine = ex.principal.input_limits
    if ex.policy.any_limits or mine is not None:
        check_limits(request_limits(ex, req, call.headers).tighter(mine), call.body)
    inp = await route_input(state, ex, req, call.body, call.headers)
    if ex.principal.restricts:
        inp = await for_tenant(state, ex, inp, call.body)
    decision = make_decision(state, ex, inp)
    if ex.principal.metered or ex.policy.budget_daily_usd is not None:
        chain = (decision.model, *decision.fallbacks)
        usd, tokens = worst_case(ex.policy, chain, inp.prompt_tokens, inp.max_output_tokens)
        await reserve(state, ex, usd, tokens)
    if decision.route is not None:
        shadow = ex.policy.routes[decision.route].shadow
        if shadow is not None and state.evaluator.sampled(shadow):
            ex.shadow, ex.body = shadow, call.body
            if ex.stream:
                ex.answer_events = []
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    chain = (decision.model, *decision.fallbacks)
    return await forward(
        state, ex, call.body, chain=chain, path="/chat/completions", include_usage=include_usage
    )


async def embeddings(state: AppState, ex: Exchange, call: Call) -> Reply | RelayResponse:
    req = validate(EmbeddingRequest, call.body)
    entry = ex.policy.models.get(req.model)
    if entry is None:
        raise ModelNotFound(f"The model `{req.model}` does not exist.", param="model")
    allow(ex.principal, entry.id)
    ex.model = entry
    if ex.principal.metered or ex.policy.budget_daily_usd is not None:
        # embeddings bill input only; a byte per token over-reserves, never under
        tokens = len(orjson.dumps(call.body.get("input")))
        await reserve(state, ex, tokens * entry.input_usd_per_mtok / 1e6, tokens)
    return await forward(
        state, ex, call.body, chain=(entry.id,), path="/embeddings", include_usage=False
    )


async def explain(state: AppState, ex: Exchange, call: Call) -> Reply:
    req = validate(ChatCompletionRequest, call.body)
    mine = ex.principal.input_limits
    if ex.policy.any_limits or mine is not None:
        check_limits(request_limits(ex, req, call.headers).tighter(mine), call.body)
    inp = await route_input(state, ex, req, call.body, call.headers)
    if ex.principal.restricts:
        inp = await for_tenant(state, ex, inp, call.body)
    decision = make_decision(state, ex, inp)
    return Reply(200, explain_body(ex.policy, inp, decision))


async def feedback(state: AppState, ex: Exchange, call: Call) -> Reply:
    fb = validate(FeedbackRequest, call.body)
    if fb.accepted is None and fb.score is None:
        raise InvalidRequest("Send `accepted`, `score`, or both.", param="accepted")
    try:
        result = await state.accountant.feedback(fb.request_id, fb.accepted, fb.score, ex.tenant)
    except KVUnavailable:
        raise StoreUnavailable(
            "The request store did not answer; retry the feedback shortly."
        ) from None
    if result is None:
        raise RequestNotFound(
            f"No request `{fb.request_id}` is known (unknown, or older than the retention).",
            param="request_id",
        )
    return Reply(200, orjson.dumps(result))


async def list_models(state: AppState, ex: Exchange, call: Call) -> Reply:
    allowed = ex.principal.routes
    if allowed is None:
        return Reply(200, models_body(ex.policy))
    # a tenant limited to some routes and models sees only those
    body = orjson.loads(models_body(ex.policy))
    body["data"] = [item for item in body["data"] if item["id"] in allowed]
    return Reply(200, orjson.dumps(body))


async def get_model(state: AppState, ex: Exchange, call: Call) -> Reply:
    model_id = call.path_params["model_id"]
    allowed = ex.principal.routes
    for item in orjson.loads(models_body(ex.policy))["data"]:
        if item["id"] == model_id and (allowed is None or model_id in allowed):
            return Reply(200, orjson.dumps(item))
    raise ModelNotFound(f"The model `{model_id}` does not exist.", param="model")


async def tenant_me(state: AppState, ex: Exchange, call: Call) -> Reply:
    """``GET /v1/tenants/me``: the caller's configuration, spend and what remains."""
    t = ex.principal
    usage = await state.ledger.usage(t) if t.metered else {"source": "none"}
    return Reply(200, orjson.dumps({"object": "tenant", **t.describe(), "usage": usage}))


async def admin_tenants(state: AppState, ex: Exchange, call: Call) -> Reply:
    """``GET /v1/admin/tenants``: every configured tenant's configuration and usage."""
    found: dict[str, Tenant] = {}
    if state.tenants is not None:
        found.update(state.tenants.current.by_name)
    for t in state.plain_keys.values():
        found.setdefault(t.name, t)
    data = []
    for name in sorted(found):
        t = found[name]
        usage = await state.ledger.usage(t) if t.metered else {"source": "none"}
        data.append({"object": "tenant", **t.describe(), "usage": usage})
    return Reply(200, orjson.dumps({"object": "list", "data": data}))


async def admin_reload(state: AppState, ex: Exchange, call: Call) -> Reply:
    """``POST /v1/admin/reload``: re-read the policy, tenants and estimator now."""
    return Reply(200, orjson.dumps({"object": "reload", "reloaded": state.reload_all()}))


def allow(tenant: Tenant, name: str) -> None:
    """403 unless the tenant may use the route or catalog model ``name``."""
    if tenant.routes is not None and name not in tenant.routes:
        raise Forbidden(
            f"Tenant {tenant.name!r} may not use `{name}`"
            f" (allowed: {', '.join(sorted(tenant.routes))}).",
            param="model",
        )


async def for_tenant(
    state: AppState, ex: Exchange, inp: RouteInput, body: dict[str, Any]
) -> RouteInput:
    """The request as the caller's tenant may make it: its routes, its bar bounds, its
    max_tokens (injected when the request has none, so the worst case holds), and under
    budget pressure the tenant's lower bar."""
    t = ex.principal
    target = resolve(ex.policy, inp.model, inp.route_override)
    if target is not None:
        allow(t, target.name)
    changes: dict[str, Any] = {}
    if t.max_tokens is not None:
        asked = inp.max_output_tokens  # above the tenant's: refused by check_limits already
        if asked is None:
            body["max_tokens"] = t.max_tokens
            changes["max_output_tokens"] = t.max_tokens
    bar = inp.quality_bar_override
    if (t.bar_min, t.bar_max) != (0.0, 1.0):
        if bar is not None and not t.bar_min <= bar <= t.bar_max:
            raise Forbidden(
                f"x-effgate-quality-bar {bar} is outside tenant {t.name!r}'s bounds"
                f" [{t.bar_min}, {t.bar_max}].",
                param="x-effgate-quality-bar",
            )
        changes["bar_bounds"] = (t.bar_min, t.bar_max)
    if t.pressure_at is not None and t.pressure_bar is not None:
        share = state.ledger.pressure(t)
        if share is None:
            await state.ledger.usage(t)  # refreshes the share (at most once a second)
            share = state.ledger.pressure(t)
        if share is not None and share >= t.pressure_at:
            low = t.pressure_bar
            changes["quality_bar_override"] = low if bar is None else min(bar, low)
            ex.notes = {
                "x-effgate-budget-pressure": f"{share:.3f}",
                "x-effgate-quality-bar": f"{changes['quality_bar_override']:g}",
            }
            state.metrics.budget_pressure.inc((state.metrics.tenant_label(t.name),))
    return replace(inp, **changes) if changes else inp


async def reserve(state: AppState, ex: Exchange, usd: float, tokens: int) -> None:
    """Hold the worst case on the tenant's meters, then on the policy's ``budget.daily_usd``
    (the whole deployment's); if the second refuses, the first is released."""
    ledger = state.ledger
    holds = []
    if ex.principal.metered and (hold := await ledger.reserve(ex.principal, usd, tokens)):
        holds.append(hold)
    daily = ex.policy.budget_daily_usd
    if daily is not None:
        try:
            hold = await ledger.reserve(ledger.deployment(daily), usd, tokens)
        except GatewayError:
            for h in holds:
                ledger.settle(h, 0.0, 0)
            raise
        if hold is not None:
            holds.append(hold)
    ex.holds = tuple(holds)


def worst_case(
    policy: CompiledPolicy, chain: tuple[str, ...], prompt_tokens: int, max_output: int | None
) -> tuple[float, int]:
    """The most any model of the chain can cost, and the most tokens it can use: the prompt
    and ``max_output`` (else the model's output limit, else what its context leaves)."""
    usd, tokens = 0.0, 0
    for model_id in chain:
        m = policy.models[model_id]
        out = max_output or m.max_output_tokens or max(1, m.context_window - prompt_tokens)
        cost = (prompt_tokens * m.input_usd_per_mtok + out * m.output_usd_per_mtok) / 1e6
        usd = max(usd, cost)
        tokens = max(tokens, prompt_tokens + out)
    return usd, tokens


def validate(model: type[M], data: Any) -> M:
    """``data`` as ``model``: 400 ``invalid_request_error`` naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        raise InvalidRequest(f"Invalid request: {err['msg']}", param=param) from None


def request_limits(ex: Exchange, req: ChatCompletionRequest, headers: Mapping[str, str]) -> Limits:
    """The input limits of the route the request resolves to (the policy's default when it
    names a catalog model, or nothing known). A tenant's own limits go over these with
    ``Limits.tighter`` before ``check_limits``."""
    policy = ex.policy
    return limits_for(policy, resolve(policy, req.model, headers.get("x-effgate-route")))


def check_limits(limits: Limits, body: Mapping[str, Any]) -> None:
    """400 when a validated chat ``body`` is past one of ``limits``: too many messages
    (``array_above_max_length``), too many characters (``context_length_exceeded``), or a
    larger ``max_tokens`` / ``max_completion_tokens`` (``integer_above_max_value``).

    Characters are counted in one pass, stopping as soon as the cap is passed: string
    contents, the text of content parts, tool-call arguments, and the tool definitions
    (their JSON). Images and audio count nothing here (the body limit bounds them)."""
    if not limits.active:
        return
    messages = body["messages"]
    cap = limits.max_messages
    if cap is not None and len(messages) > cap:
        raise ArrayTooLong(
            f"Invalid 'messages': array too long. Expected an array with maximum length {cap},"
            f" but got an array with length {len(messages)} instead.",
            param="messages",
        )
    cap = limits.max_tokens
    if cap is not None:
        for name in ("max_completion_tokens", "max_tokens"):
            value = body.get(name)
            # validated, but leniently: "5" and 5.0 passed as 5, so compare it as an int
            if value is not None and int(value) > cap:
                raise IntegerTooLarge(
                    f"Invalid '{name}': integer above maximum value. Expected a value <= {cap},"
                    f" but got {value} instead.",
                    param=name,
                )
    cap = limits.max_chars
    if cap is not None:
        total = _chars(messages, cap)
        tools = body.get("tools")
        if tools and total <= cap:
            try:
                total += len(orjson.dumps(tools))
            except orjson.JSONEncodeError:  # nested past what orjson writes (254 levels)
                raise TooDeep(param="tools") from None
        if total > cap:
            raise ContextLengthExceeded(
                f"The request has more than {cap} characters of messages and tools, the limit"
                " of this route.",
                param="messages",
            )


def _chars(messages: list[Any], cap: int) -> int:
    """Text characters of ``messages``, counted until past ``cap``."""
    total = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                if isinstance(text, str):
                    total += len(text)
        calls = m.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                fn = call.get("function") if isinstance(call, dict) else None
                args = fn.get("arguments") if isinstance(fn, dict) else None
                if isinstance(args, str):
                    total += len(args)
        if total > cap:
            break
    return total


def _needs(req: ChatCompletionRequest) -> frozenset[str]:
    needs = set()
    if req.tools:
        needs.add("tools")
    if req.stream:
        needs.add("streaming")
    rf = req.response_format
    if rf is not None and rf.get("type") == "json_schema":
        needs.add("json_schema")
    for m in req.messages:
        if isinstance(m.content, list) and any(
            p.type in ("image_url", "input_image") for p in m.content
        ):
            needs.add("vision")
            break
    return frozenset(needs)


def _float_header(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(f"header {name} must be a number", param=name) from None
    if not math.isfinite(value) or value < 0:  # inf: the engine refuses a non-finite bar
        raise InvalidRequest(f"header {name} must be a finite non-negative number", param=name)
    return value


async def route_input(
    state: AppState,
    ex: Exchange,
    req: ChatCompletionRequest,
    body: dict[str, Any],
    headers: Mapping[str, str],
) -> RouteInput:
    """Everything the decision needs, computed once (difficulty only when a bar is in play)."""
    policy = ex.policy
    messages = body["messages"]
    text = prompt_text(messages)
    override = headers.get("x-effgate-route")
    difficulty = p = None
    meta_task = req.metadata.get("task") if req.metadata else None
    task = headers.get("x-effgate-task") or (meta_task if isinstance(meta_task, str) else None)
    target = resolve(policy, req.model, override)
    if (
        target is not None
        and target.kind == "route"
        and policy.routes[target.name].uses_quality_bar
    ):
        t0 = time.perf_counter()
        difficulty, p, ex.signature = state.estimator.score(
            policy, target.name, messages, body.get("tools"), task
        )
        state.metrics.estimator_duration.observe((), time.perf_counter() - t0)
    ex.task = task
    ex.messages = messages
    ex.tools = body.get("tools")
    ex.prompt_tokens = await state.tokens.estimate_prompt_threaded(
        text, messages, policy.smallest_context_window
    )
    if policy.log_prompts:
        ex.prompt = text
    return RouteInput(
        model=req.model,
        difficulty=difficulty,
        p=p,
        prompt_text=text,
        prompt_tokens=ex.prompt_tokens,
        max_output_tokens=req.max_completion_tokens or req.max_tokens,
        needs=_needs(req),
        task=task,
        route_override=override,
        quality_bar_override=_float_header(headers, "x-effgate-quality-bar"),
        max_cost_usd=_float_header(headers, "x-effgate-max-cost-usd"),
    )


def make_decision(state: AppState, ex: Exchange, inp: RouteInput) -> Decision:
    try:
        decision = decide(ex.policy, inp, state.health)
    except UnknownModel:
        raise ModelNotFound(
            f"The model `{inp.model}` does not exist or you do not have access to it.",
            param="model",
        ) from None
    except NoEligibleModel as exc:
        if exc.why == "context":
            raise ContextLengthExceeded(
                f"The request ({inp.prompt_tokens} prompt tokens) does not fit the context window"
                " of any model this route may use.",
                param="messages",
            ) from None
        if exc.why == "circuit":
            raise NoHealthyUpstream("Every model this request may use is unhealthy.") from None
        raise InvalidRequest(f"No model of this route can serve the request: {exc}") from None
    ex.decision = decision
    return decision
