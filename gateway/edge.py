"""The ASGI application: the gateway's edge, one layer between the server and the endpoints.

    GatewayApp(scope, receive, send)
      lifespan                      the lifespan context create_app gives (builds AppState)
      POST /v1/chat/completions ... exact paths (and /v1/models/<id>) -> lifecycle.serve
      GET /healthz /readyz /metrics answered here, and /openapi.json (gateway.openapi, prebuilt)
      anything else                 404, or 405 for a known path, OpenAI-shaped

One layer, not a framework's stack: the request id (the client's ``x-request-id`` when it is a
sane token, else a fresh one), the headers as a dict and the in-flight gauge for /v1 calls are
done here, once. An unexpected exception is logged with the request id and answered with a
generic OpenAI-shaped 500 (by ``lifecycle.serve`` for /v1 calls, here for the others).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import traceback
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import State
from starlette.types import Receive, Scope, Send

from gateway import openapi
from gateway.errors import error_body, internal_error_body
from gateway.lifecycle import Spec, serve
from gateway.routes import MODEL_PREFIX, SPECS
from gateway.state import AppState

log = logging.getLogger("effgate")

Lifespan = Callable[["GatewayApp"], AbstractAsyncContextManager[None]]
Plain = Callable[[AppState], Awaitable[tuple[int, bytes, bytes]]]

_SANE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_PREFIX = "req_" + os.urandom(6).hex()
_COUNTER = itertools.count(1)
JSON_TYPE = b"application/json"
# what served a request, on every response; lifecycle sets the real values on /v1 calls
DEFAULT_HEADERS = (
    (b"x-effgate-model", b"none"),
    (b"x-effgate-route", b"none"),
    (b"x-effgate-upstream-ms", b"0"),
)


def new_request_id() -> str:
    """A request id unique across replicas: a random per-process prefix and a counter."""
    return f"{_PREFIX}{next(_COUNTER):012x}"


async def _healthz(state: AppState) -> tuple[int, bytes, bytes]:
    return 200, b'{"status":"ok"}', JSON_TYPE


async def _readyz(state: AppState) -> tuple[int, bytes, bytes]:
    ok = state.ready and not state.draining
    body = {
        "status": "ready" if ok else ("draining" if state.draining else "starting"),
        "policy_sha256": state.policies.current.sha256,
    }
    return (200 if ok else 503), orjson.dumps(body), JSON_TYPE


async def _metrics(state: AppState) -> tuple[int, bytes, bytes]:
    return 200, generate_latest(state.metrics.registry), CONTENT_TYPE_LATEST.encode()


async def _openapi(state: AppState) -> tuple[int, bytes, bytes]:
    return 200, openapi.DOCUMENT, JSON_TYPE


PLAIN: dict[str, Plain] = {
    "/healthz": _healthz,
    "/readyz": _readyz,
    "/metrics": _metrics,
    openapi.PATH: _openapi,
}


class GatewayApp:
    """The ASGI callable uvicorn serves. ``state.effgate`` is the ``AppState`` once started."""

    def __init__(self, lifespan: Lifespan) -> None:
        self.state = State()
        self.lifespan_context = lifespan

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._run_lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: dict[str, str] = {}
        for name, value in reversed(scope["headers"]):  # the first of repeated headers wins
            headers[name.decode("latin-1")] = value.decode("latin-1")
        rid = headers.get("x-request-id")
        request_id = rid if rid is not None and _SANE_ID.match(rid) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        scope["app"] = self
        path: str = scope["path"]
        method: str = scope["method"]
        spec: Spec | None = SPECS.get(path)
        params: dict[str, Any] = {}
        if spec is None and path.startswith(MODEL_PREFIX) and len(path) > len(MODEL_PREFIX):
            spec = SPECS[MODEL_PREFIX]
            params = {"model_id": path[len(MODEL_PREFIX) :]}
        state: AppState = self.state.effgate
        if spec is not None and method == spec.method:
            # lifecycle.serve answers every failure itself, the unexpected ones included
            state.metrics.in_flight.inc()
            try:
                await serve(state, spec, scope, receive, send, request_id, headers, params)
            finally:
                state.metrics.in_flight.dec()
            return
        try:
            if spec is not None:
                await _error(send, request_id, 405, f"{method} {path}: Method Not Allowed",
                             "method_not_allowed")  # fmt: skip
            elif (plain := PLAIN.get(path)) is not None and method in ("GET", "HEAD"):
                status, body, content_type = await plain(state)
                await _send(send, status, body, content_type, request_id)
            elif plain is not None:
                await _error(send, request_id, 405, f"{method} {path}: Method Not Allowed",
                             "method_not_allowed")  # fmt: skip
            else:
                await _error(send, request_id, 404, f"{method} {path}: Not Found", "not_found")
        except Exception:
            log.exception("unhandled error in request %s", request_id)
            await _send(send, 500, internal_error_body(request_id), JSON_TYPE, request_id)

    async def _run_lifespan(self, receive: Receive, send: Send) -> None:
        """The ASGI lifespan protocol around ``create_app``'s lifespan context."""
        await receive()  # lifespan.startup
        context = self.lifespan_context(self)
        try:
            await context.__aenter__()
        except BaseException:
            log.exception("the gateway failed to start")
            await send({"type": "lifespan.startup.failed", "message": traceback.format_exc()})
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        try:
            await context.__aexit__(None, None, None)
        except BaseException:
            log.exception("the gateway failed to shut down cleanly")
            await send({"type": "lifespan.shutdown.failed", "message": traceback.format_exc()})
            return
        await send({"type": "lifespan.shutdown.complete"})


async def _send(send: Send, status: int, body: bytes, content_type: bytes, rid: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"x-effgate-request-id", rid.encode()),
                *DEFAULT_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _error(send: Send, rid: str, status: int, message: str, code: str) -> None:
    body = error_body(message, "invalid_request_error", code)
    await _send(send, status, body, JSON_TYPE, rid)
