"""Forward one request along its chain: the chosen model, then its fallbacks.

Each model is tried up to ``max_retries + 1`` times on connect errors, 429 and 5xx, with
jittered backoff (an upstream's ``Retry-After`` wins); an open circuit skips a model. Retries
and fallbacks happen only before the first byte reaches the client. A policy or route
``deadline_s`` bounds them all until the answer starts: each call gets at most what is left
(a call it cuts short is that upstream's timeout), a retry whose pause would reach it gives
way to the next model, and nothing starts past it (504).
JSON answers come back as a ``Reply`` priced from their usage; streams as a
``RelayResponse`` that has its first chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import orjson

from gateway.accounting import Usage, usage_from
from gateway.errors import (
    GatewayError,
    NoHealthyUpstream,
    ProtocolFailed,
    TimedOut,
    TooDeep,
    UpstreamError,
    UpstreamStatusError,
)
from gateway.exchange import Exchange
from gateway.lifecycle import finish
from gateway.relay import RelayResponse, close_chunks, model_rewriter
from gateway.shadow import answer_from_json
from gateway.state import AppState
from gateway.upstreams.base import Reply, Stream, Upstream
from policies.compiled import ModelEntry, deadline_for


def _backoff(state: AppState, attempt: int, exc: BaseException) -> float:
    base = state.settings.retry_backoff_s * (2**attempt)
    if isinstance(exc, UpstreamStatusError) and (ra := exc.upstream_headers.get("retry-after")):
        with contextlib.suppress(ValueError):
            base = max(base, float(ra))
    jitter: float = 0.5 + random.random() / 2
    return float(min(state.settings.retry_backoff_max_s, base)) * jitter


def _upstream_body(body: dict[str, Any], entry: ModelEntry, stream: bool) -> dict[str, Any]:
    out = dict(body)
    out["model"] = entry.upstream_model
    if stream:
        opts = dict(out.get("stream_options") or {})
        opts["include_usage"] = True
        out["stream_options"] = opts
    return out


async def _first_chunk(stream: Stream, deadline_s: float) -> tuple[bytes, AsyncIterator[bytes]]:
    it = stream.chunks().__aiter__()
    try:
        async with asyncio.timeout(deadline_s):
            first = await it.__anext__()
    except BaseException as exc:
        await close_chunks(it)
        if isinstance(exc, TimeoutError):
            raise TimedOut(f"no first token within {deadline_s:g} s") from exc
        if isinstance(exc, StopAsyncIteration):
            raise ProtocolFailed("upstream closed the stream before sending anything") from exc
        raise
    return first, it


def _headers(ex: Exchange) -> dict[str, str]:
    d = ex.decision
    h = {
        "x-effgate-model": ex.model_id,
        "x-effgate-route": ex.route,
        "x-effgate-upstream-ms": f"{ex.upstream_s * 1000:.1f}",
    }
    if d is not None and d.p is not None:
        h["x-effgate-quality"] = f"{d.p:.4f}"
    if d is not None and d.difficulty is not None:
        h["x-effgate-difficulty"] = f"{d.difficulty:.4f}"
    if ex.notes is not None:
        h.update(ex.notes)
    return h


async def _json_reply(state: AppState, ex: Exchange, data: bytes) -> Reply:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolFailed("upstream sent a malformed JSON body") from exc
    if not isinstance(obj, dict):
        raise ProtocolFailed("upstream sent a JSON body that is not an object")
    usage = usage_from(obj.get("usage"))
    if usage is None:
        text = "".join(
            str((c.get("message") or {}).get("content") or "")
            for c in obj.get("choices") or ()
            if isinstance(c, dict)
        )
        usage = Usage(ex.prompt_tokens, await state.tokens.count_threaded(text), estimated=True)
    ex.price(usage)
    if ex.shadow is not None:
        ex.answer = answer_from_json(obj)
    headers = _headers(ex)
    headers["x-effgate-cost-usd"] = f"{ex.cost_usd:.10f}"
    return Reply(200, _with_model(data, obj, ex), headers)


def _with_model(data: bytes, obj: dict[str, Any], ex: Exchange) -> bytes:
    """The upstream's bytes with ``model`` set to the catalog id: a byte replace of the one
    field (the body is relayed, not re-encoded), or a re-encode when the field is written in
    a way the replace does not find."""
    served = obj.get("model")
    if ex.model is None or served is None or served == ex.model.id:
        return data
    if isinstance(served, str):
        out = model_rewriter(served, ex.model.id)(data)
        if out is not data:
            return out
    obj["model"] = ex.model.id
    return orjson.dumps(obj)


async def forward(
    state: AppState,
    ex: Exchange,
    body: dict[str, Any],
    *,
    chain: tuple[str, ...],
    path: str,
    include_usage: bool,
) -> Reply | RelayResponse:
    """Try ``chain[0]``, then the fallbacks; retry each on connect errors, 429 and 5xx. With
    a deadline (the route's ``deadline_s``, else the policy's), every call gets at most what
    is left of it, and none starts once it has passed: 504 ``upstream_timeout``."""
    last: GatewayError | None = None
    # the decision's route, not the ``route`` label: a route may be named "direct" or "none"
    deadline_s = deadline_for(ex.policy, ex.decision.route if ex.decision is not None else None)
    end = None if deadline_s is None else time.perf_counter() + deadline_s
    for i, model_id in enumerate(chain):
        if end is not None and end <= time.perf_counter():
            raise _past_deadline(deadline_s, ex)
        entry = ex.policy.models[model_id]
        if i > 0:
            state.metrics.fallbacks.labels(ex.route, chain[i - 1], model_id).inc()
            ex.fallback_from.append(chain[i - 1])
        grant = state.health.acquire(model_id)
        if not grant:
            last = NoHealthyUpstream(f"upstream {model_id!r} is unhealthy (circuit open)")
            continue
        ex.model = entry
        upstream = state.upstreams.get(model_id)
        out_body = _upstream_body(body, entry, ex.stream)
        for attempt in range(entry.max_retries + 1):
            t0 = time.perf_counter()
            left = None if end is None else end - t0
            if left is not None and left <= 0:
                state.health.release(model_id, grant)
                raise _past_deadline(deadline_s, ex)
            ex.attempts += 1
            try:
                result = await _call(
                    state, ex, upstream, entry, out_body, path, include_usage, left
                )
            except (asyncio.CancelledError, TooDeep):
                # the client left, or its body could not be sent: no verdict on the upstream
                state.health.release(model_id, grant)
                raise
            except UpstreamError as exc:
                elapsed = time.perf_counter() - t0
                ex.upstream_s += elapsed
                state.metrics.upstream_duration.observe((model_id,), elapsed)
                state.metrics.upstream_errors.labels(model_id, exc.kind).inc()
                last = exc
                if isinstance(exc, UpstreamStatusError) and not exc.retryable:
                    state.health.success(model_id)  # it answered: alive, the request was bad
                    raise
                # a call the deadline cut short is a timeout like its own: silent that long, it
                # counts, so a hung upstream's circuit still opens and traffic moves on
                state.health.failure(model_id)
                if end is not None and time.perf_counter() >= end - _SLACK_S:
                    raise _past_deadline(deadline_s, ex) from exc
                if exc.retryable and attempt < entry.max_retries:
                    pause = _backoff(state, attempt, exc)
                    if end is not None and time.perf_counter() + pause >= end:
                        break  # no time to retry after the pause: the next model, if any
                    state.metrics.retries.labels(model_id).inc()
                    await asyncio.sleep(pause)
                    grant = state.health.acquire(model_id)
                    if not grant:
                        break
                    continue
                break
            state.health.success(model_id)
            return result
    assert last is not None
    raise last


_SLACK_S = 0.001  # a timer may fire this much before the deadline it was set from


def _past_deadline(deadline_s: float | None, ex: Exchange) -> TimedOut:
    return TimedOut(
        f"no answer within the request's deadline of {deadline_s:g} s "
        f"({ex.attempts} upstream attempt(s))"
    )


async def _call(
    state: AppState,
    ex: Exchange,
    upstream: Upstream,
    entry: ModelEntry,
    body: dict[str, Any],
    path: str,
    include_usage: bool,
    left: float | None = None,
) -> Reply | RelayResponse:
    """One call; ``left``: what is left of the request's deadline, which caps the call's
    total (JSON) or first-byte (stream) timeout."""
    t0 = time.perf_counter()
    t = entry.timeouts
    limit = t.total_s if left is None else min(t.total_s, left)
    if not ex.stream:
        reply = await upstream.complete(path, body, limit)
        elapsed = time.perf_counter() - t0
        ex.upstream_s += elapsed
        state.metrics.upstream_duration.observe((entry.id,), elapsed)
        return await _json_reply(state, ex, reply.body)
    first_byte = t.first_byte_s if left is None else min(t.first_byte_s, left)
    stream = await upstream.open_stream(body, first_byte)
    try:
        remaining = max(0.001, first_byte - (time.perf_counter() - t0))
        first, rest = await _first_chunk(stream, remaining)
    except BaseException:
        await stream.aclose()
        raise
    elapsed = time.perf_counter() - t0
    ex.upstream_s += elapsed
    state.metrics.upstream_duration.observe((entry.id,), elapsed)
    headers = [(k.encode(), v.encode()) for k, v in _headers(ex).items()]
    headers += [
        (b"x-effgate-request-id", ex.request_id.encode()),
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
    ]
    return RelayResponse(
        stream=stream,
        chunks=rest,
        first=first,
        exchange=ex,
        headers=headers,
        include_usage=include_usage,
        idle_s=t.idle_s,
        rewrite=model_rewriter(entry.upstream_model, entry.id),
        on_finish=partial(finish, state),
        on_upstream_error=lambda m, k: state.metrics.upstream_errors.labels(m, k).inc(),
    )
