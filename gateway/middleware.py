"""Pure-ASGI middleware: request id, default effgate headers, and the in-flight gauge.

The request id is the client's ``x-request-id`` when it is a sane token, else a fresh one; it is
put in ``scope["state"]["request_id"]`` and on every response as ``x-effgate-request-id``, along
with default ``x-effgate-model`` / ``x-effgate-route`` / ``x-effgate-upstream-ms`` headers when
the handler set none (errors raised before a routing decision).
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import Gauge

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

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

        counted = self.in_flight is not None and scope["path"].startswith("/v1/")
        if counted:
            assert self.in_flight is not None
            self.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if counted:
                assert self.in_flight is not None
                self.in_flight.dec()
