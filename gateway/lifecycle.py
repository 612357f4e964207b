"""The one owner of a request's lifecycle: every /v1 endpoint runs through ``serve``.

    edge.GatewayApp -> serve(state, routes.SPECS[path], scope, receive, send, id, headers)
        Exchange(request id, endpoint, the live policy)       one request's running account
        authenticate -> rate limit -> read the JSON body      401, 429, 413, 400, 408
        SPEC.run(state, ex, call)                              pipeline.py: a Reply or a
            (under the disconnect watch when it calls out)     RelayResponse, or it raises
        a GatewayError: status, outcome and body from the error itself (errors.py), plus the
            effgate headers; anything else: logged, status 500 with a generic body that
            names the request id, outcome internal_error
        cut by the server (the shutdown deadline cancels the task): 503 server_shutting_down,
            recorded like any other answer
        finish(state, ex): metrics, the request record, the feedback summary, exactly once:
            here for JSON replies and errors; for a stream, the relay calls the same function
            when the last event is out

Plain ASGI on purpose: this runs for every request, and a framework's request and response
objects cost more here than everything effgate itself does for a passthrough call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import orjson
from starlette.types import Receive, Scope, Send

from gateway.errors import (
    Forbidden,
    GatewayError,
    InvalidRequest,
    PayloadTooLarge,
    RequestTimeout,
    ShuttingDown,
    Unauthorized,
    UpstreamStatusError,
    internal_error_body,
)
from gateway.exchange import Endpoint, Exchange
from gateway.meters import RPM_ONLY
from gateway.relay import RelayResponse
from gateway.state import AppState
from gateway.tenants import ADMIN, Tenant, digest
from gateway.upstreams.base import Reply

T = TypeVar("T")
log = logging.getLogger("effgate")
# a client that has not left after this long gets a watcher; quicker answers need none
WATCH_AFTER_S = 0.02
# set in the scope (to the deadline, in seconds) by gateway.transport when the body did not
# arrive in time; the reader that it wakes answers 408
BODY_DEADLINE = "effgate.body_deadline"


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
    method: Literal["GET", "POST"] = "POST"
    reads_body: bool = True
    body_limit: int | None = None  # None: the EFFGATE_MAX_BODY_BYTES setting
    rate_limited: bool = True
    # calls an upstream: a client that disconnects cancels the call (and closes the upstream)
    # (and reserves its worst-case cost and tokens in the pipeline, not here)
    calls_out: bool = False
    admin: bool = False  # only admin keys (tenants file admin_keys_sha256) may call it


class Disconnected(Exception):
    """The client went away before its request was read."""


async def serve(
    state: AppState,
    spec: Spec,
    scope: Scope,
    receive: Receive,
    send: Send,
    request_id: str,
    headers: Mapping[str, str],
    path_params: Mapping[str, Any],
) -> None:
    ex = Exchange(request_id, spec.name, state.policies.current)
    try:
        ex.principal = await authenticate(state, headers, spec)
        ex.tenant = ex.principal.name
        body = None
        if spec.reads_body:
            limit = spec.body_limit or state.settings.max_body_bytes
            body = await read_json(receive, headers, limit, scope)
        work = spec.run(state, ex, Call(body, headers, path_params))
        if spec.calls_out:
            result = await until_disconnect(receive, work)
        else:
            result = await work
    except Disconnected:
        result = None
    except asyncio.CancelledError:
        # the client leaving is handled below (until_disconnect): this is the server cutting
        # the request, at the shutdown deadline. Say so to the client and in the record.
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        err = ShuttingDown("The gateway shut down before the request finished.")
        ex.status, ex.outcome, ex.error = err.status, err.outcome, err.message
        finish(state, ex)
        await respond(send, err.status, err.body(), {"connection": "close"}, request_id)
        return
    except GatewayError as exc:
        ex.status, ex.outcome, ex.error = exc.status, exc.outcome, exc.message
        extra = exc.extra_headers
        extra["x-effgate-model"] = ex.model_id
        extra["x-effgate-route"] = ex.route
        extra["x-effgate-upstream-ms"] = f"{ex.upstream_s * 1000:.1f}"
        if isinstance(exc, UpstreamStatusError):
            extra["x-effgate-upstream"] = ex.model_id
            ex.error = f"upstream {ex.model_id} returned HTTP {exc.status}"
        finish(state, ex)
        await respond(send, exc.status, exc.body(), exc.headers(), request_id)
        return
    except Exception:
        # the one catch-all: the traceback to the log, a generic body with the request id
        log.exception("unhandled error in request %s", request_id)
        ex.status, ex.outcome, ex.error = 500, "internal_error", "internal error"
        finish(state, ex)
        await respond(send, 500, internal_error_body(request_id), {}, request_id)
        return
    if result is None:
        ex.status, ex.outcome = 499, "cancelled"
        finish(state, ex)
        await respond(send, 499, b"", {}, request_id)  # nobody is listening; the server drops it
        return
    if isinstance(result, RelayResponse):
        await result(scope, receive, send)  # the relay calls finish when the stream ends
        return
    ex.status = result.status
    finish(state, ex)
    await respond(send, result.status, result.body, result.headers, request_id)


def finish(state: AppState, ex: Exchange) -> None:
    """Account for a finished exchange: the one call per request, whatever happened."""
    if ex.holds:
        u = ex.usage
        for hold in ex.holds:
            state.ledger.settle(hold, ex.cost_usd, u.total if u is not None else 0)
    state.accountant.finish(ex)


_DEFAULTS = (("x-effgate-model", b"none"), ("x-effgate-route", b"none"))


async def respond(
    send: Send, status: int, body: bytes, headers: Mapping[str, str], request_id: str
) -> None:
    """Send one JSON response: ``headers``, then the defaults it lacks, then the request id."""
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-effgate-request-id", request_id.encode()),
    ]
    raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    for name, value in _DEFAULTS:
        if name not in headers:
            raw.append((name.encode(), value))
    if "x-effgate-upstream-ms" not in headers:
        raw.append((b"x-effgate-upstream-ms", b"0"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def authenticate(state: AppState, headers: Mapping[str, str], spec: Spec) -> Tenant:
    """The caller's tenant: 401 without a valid key, 403 for a key on the wrong side of
    admin. Endpoints that do not call out charge the tenant's requests-per-minute here
    (chat and embeddings reserve everything at once in the pipeline)."""
    tenant = identify(state, headers, admin=spec.admin)
    if spec.rate_limited and not spec.calls_out and tenant.rpm is not None:
        hold = await state.ledger.reserve(tenant, 0.0, 0, kinds=RPM_ONLY)
        if hold is not None:
            state.ledger.settle(hold, 0.0, 0)
    return tenant


def identify(state: AppState, headers: Mapping[str, str], *, admin: bool) -> Tenant:
    """Look the bearer key up by its sha256 (tenants file, then EFFGATE_API_KEYS)."""
    tenants = state.tenants.current if state.tenants is not None else None
    plain = state.plain_keys
    if tenants is None and not plain:
        if admin:
            raise Forbidden("Admin endpoints need a tenants file with admin_keys_sha256.")
        return state.default_tenant
    auth = headers.get("authorization", "")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    if not token:
        raise Unauthorized(
            "You didn't provide an API key. Send it as `Authorization: Bearer <key>`."
        )
    d = digest(token)
    found = None
    if tenants is not None:
        if d in tenants.admin:
            if admin:
                return ADMIN
            raise Forbidden("This is an admin key: it may only call /v1/admin endpoints.")
        found = tenants.by_digest.get(d)
    if found is None:
        found = plain.get(d)
    if found is None:
        raise Unauthorized("Incorrect API key provided.")
    if admin:
        raise Forbidden("This endpoint needs an admin key.")
    return found


async def read_json(
    receive: Receive, headers: Mapping[str, str], limit: int, scope: Scope | None = None
) -> Any:
    """The request body as JSON: 413 past ``limit`` bytes (declared or sent), 400 if malformed,
    408 when the transport marks ``scope`` past the body deadline (``BODY_DEADLINE``)."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body is larger than the {limit}-byte limit.")
    message = await receive()
    if message["type"] == "http.disconnect":
        raise Disconnected
    body: bytes | bytearray = message.get("body", b"")
    if message.get("more_body", False):
        buf = bytearray(body)
        while True:
            if len(buf) > limit:
                raise PayloadTooLarge(f"Request body is larger than the {limit}-byte limit.")
            if scope is not None and BODY_DEADLINE in scope:
                raise RequestTimeout(
                    f"The request body did not arrive within {scope[BODY_DEADLINE]:g} s."
                )
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Disconnected
            buf += message.get("body", b"")
            if not message.get("more_body", False):
                break
        body = buf
    if len(body) > limit:
        raise PayloadTooLarge(f"Request body is larger than the {limit}-byte limit.")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"We could not parse the JSON body of your request: {exc}") from None


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T | None:
    """Run ``work``; if the client disconnects first, cancel it (closing the upstream call).

    Answers that come back within ``WATCH_AFTER_S`` need no watcher, and most do not wait
    that long, so the watching task (the costly part) starts only then; a client that leaves
    sooner is noticed when its answer is sent.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    gone = False
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    def start() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch())

    timer = loop.call_later(WATCH_AFTER_S, start)
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()
        return None
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()
