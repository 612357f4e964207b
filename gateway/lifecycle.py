"""The one owner of a request's lifecycle: every /v1 endpoint runs through ``serve``.

routes.<handler>(request) -> serve(request, ENDPOINT)
    Exchange(request id, endpoint, the live policy)       one request's running account
    authenticate -> rate limit -> read the JSON body      401, 429, 413, 400
    ENDPOINT.run(state, ex, call)                          pipeline.py: a Reply or a
        (under the disconnect watch when it calls out)     RelayResponse, or it raises
    a GatewayError: status, outcome and body from the error itself (errors.py), plus the
        effgate headers; anything else: status 500, outcome internal_error, re-raised to
        the middleware's catch-all
    finish(state, ex): metrics, the request record, the feedback summary, exactly once:
        here for JSON replies and errors; for a stream, the relay calls the same function
        when the last event is out
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway.errors import (
    JSON,
    GatewayError,
    InvalidRequest,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    UpstreamStatusError,
    response,
)
from gateway.exchange import Endpoint, Exchange
from gateway.relay import RelayResponse
from gateway.state import AppState
from gateway.upstreams.base import Reply

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Call:
    """What an endpoint function gets of the HTTP request: the parsed body and headers."""

    body: Any
    headers: Mapping[str, str]
    path_params: Mapping[str, Any]


Run = Callable[[AppState, Exchange, Call], Awaitable[Reply | RelayResponse]]


@dataclass(frozen=True, slots=True)
class Spec:
    """One endpoint: its name (metrics label and record field) and how it is served."""

    name: Endpoint
    run: Run
    reads_body: bool = True
    body_limit: int | None = None  # None: the EFFGATE_MAX_BODY_BYTES setting
    rate_limited: bool = True
    # calls an upstream: a client that disconnects cancels the call (and closes the upstream)
    calls_out: bool = False


async def serve(request: Request, spec: Spec) -> Response:
    state: AppState = request.app.state.effgate
    ex = Exchange(request.scope["state"]["request_id"], spec.name, state.policies.current)
    try:
        ex.tenant = await authenticate(state, request.headers, count=spec.rate_limited)
        body = None
        if spec.reads_body:
            body = await read_json(request, spec.body_limit or state.settings.max_body_bytes)
        work = spec.run(state, ex, Call(body, request.headers, request.path_params))
        if spec.calls_out:
            result = await until_disconnect(request, work)
        else:
            result = await work
    except ClientDisconnect:  # gone while we read the body
        result = None
    except GatewayError as exc:
        ex.status, ex.outcome, ex.error = exc.status, exc.outcome, exc.message
        headers = exc.extra_headers
        headers["x-effgate-model"] = ex.model_id
        headers["x-effgate-route"] = ex.route
        headers["x-effgate-upstream-ms"] = f"{ex.upstream_s * 1000:.1f}"
        if isinstance(exc, UpstreamStatusError):
            headers["x-effgate-upstream"] = ex.model_id
            ex.error = f"upstream {ex.model_id} returned HTTP {exc.status}"
        finish(state, ex)
        return response(exc)
    except Exception:
        ex.status, ex.outcome, ex.error = 500, "internal_error", "internal error"
        finish(state, ex)
        raise  # the middleware logs it and sends a generic 500 with the request id
    if result is None:
        ex.status, ex.outcome = 499, "cancelled"
        finish(state, ex)
        return Response(status_code=499)
    if isinstance(result, RelayResponse):
        return result  # the relay calls finish when the stream ends
    ex.status = result.status
    finish(state, ex)
    return Response(result.body, result.status, result.headers, media_type=JSON)


def finish(state: AppState, ex: Exchange) -> None:
    """Account for a finished exchange: the one call per request, whatever happened."""
    state.accountant.finish(ex)


async def authenticate(state: AppState, headers: Mapping[str, str], *, count: bool) -> str:
    """The caller's tenant (401 without a valid key); ``count`` charges the rate limit."""
    keys = state.settings.api_keys
    tenant = "default"
    if keys:
        auth = headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        found = keys.get(token) if token else None
        if found is None:
            raise Unauthorized("Incorrect API key provided.")
        tenant = found
    rpm = state.settings.rate_limit_rpm
    if count and rpm is not None and await state.kv.hit("tenant:" + tenant, 60) > rpm:
        raise RateLimited(
            f"Rate limit of {rpm} requests per minute reached.",
            retry_after_s=max(1, 60 - int(time.time()) % 60),
        )
    return tenant


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON: 413 past ``limit`` bytes (declared or sent), 400 if malformed."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body is larger than the {limit}-byte limit.")
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise PayloadTooLarge(f"Request body is larger than the {limit}-byte limit.")
    try:
        return orjson.loads(buf)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"We could not parse the JSON body of your request: {exc}") from None


async def until_disconnect(request: Request, work: Awaitable[T]) -> T | None:
    """Run ``work``; if the client disconnects first, cancel it (closing the upstream call).

    A plain asyncio task watches ``receive()``: a tenth of the cost of a task group, and this
    runs on every request that calls out.
    """
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()
        return None
    finally:
        watcher.cancel()
