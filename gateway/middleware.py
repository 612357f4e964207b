"""Pure-ASGI middleware: request id, default effgate headers, and the in-flight gauge.

The request id is the client's ``x-request-id`` when it is a sane token, else a fresh one; it is
put in ``scope["state"]["request_id"]`` and on every response as ``x-effgate-request-id``, along
with default ``x-effgate-model`` / ``x-effgate-route`` / ``x-effgate-upstream-ms`` headers when
the handler set none (errors raised before a routing decision).
"""

from __future__ import annotations

import logging
import os
import re

from prometheus_client import Gauge
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import error_body

log = logging.getLogger("effgate")

_SANE_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
_DEFAULTS = (
    (b"x-effgate-model", b"none"),
    (b"x-effgate-route", b"none"),
    (b"x-effgate-upstream-ms", b"0"),
)


def new_request_id() -> str:
    return "req_" + os.urandom(12).hex()


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, in_flight: Gauge | None = None) -> None:
        self.app = app
        self.in_flight = in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if _SANE_ID.match(value):
                    rid = value.decode()
                break
        request_id = rid or new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        rid_header = (b"x-effgate-request-id", request_id.encode())

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {k for k, _ in headers}
                headers.append(rid_header)
                headers.extend(h for h in _DEFAULTS if h[0] not in present)
                message["headers"] = headers
            await send(message)

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send_with_headers(message)

        gauge = self.in_flight if scope["path"].startswith("/v1/") else None
        if gauge is not None:
            gauge.inc()
        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            # the one catch-all: log the traceback, send a generic body with the request id
            log.exception("unhandled error in request %s", request_id)
            if started:
                raise
            body = error_body(
                f"The gateway hit an internal error (request {request_id}).",
                "server_error",
                "internal_error",
            )
            await send_with_headers(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
        finally:
            if gauge is not None:
                gauge.dec()
