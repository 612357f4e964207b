"""The HTTP connection under the ASGI app: uvicorn's httptools protocol with read deadlines.

uvicorn has no deadline on receiving a request: its keep-alive timer covers only the idle time
between requests, is disarmed by every byte that arrives, and is not armed at all on a fresh
connection, so a client that trickles a header byte now and then (slowloris) holds its
connection, and a slot of the connection cap, for as long as it likes. ``DeadlineProtocol``
adds the two deadlines, per connection, on the parser's own callbacks:

    headers  the request line and headers within ``header_timeout_s``: of the connection
             opening for its first request, of the request's first byte after that (the idle
             time between requests is uvicorn's keep-alive timeout). Past it: a connection
             that sent nothing is closed; one that sent part of a request gets a 408
             ``request_timeout`` and is closed.
    body     the whole body within ``body_timeout_s`` of the headers. Past it the app, which
             is already running, is told through the scope (``lifecycle.BODY_DEADLINE``) and
             woken; it answers 408 ``request_timeout`` (an exchange like any other: metrics, a
             record) and the connection is closed after the answer.

A timer is armed only while a request is incomplete at the end of a read: the usual request,
whose headers and body arrive in one read, costs no timer beyond the one per connection.

It also enforces the connection cap itself (``max_connections``, uvicorn's
``limit_concurrency`` check, which it replaces) so the 503 is OpenAI-shaped JSON, and answers
a request the parser rejects (a control byte in a header, a malformed line) with an
OpenAI-shaped 400 instead of uvicorn's plain-text one.
``server_config`` builds the ``uvicorn.Config`` that ``effgate serve`` runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import GatewayError, InvalidRequest, Overloaded, RequestTimeout
from gateway.lifecycle import BODY_DEADLINE
from gateway.settings import Settings

log = logging.getLogger("effgate")

_IDLE, _HEADERS, _BODY = 0, 1, 2
LOG_EVERY_S = 10.0


def _raw_response(status: bytes, err: GatewayError, extra: list[tuple[bytes, bytes]]) -> bytes:
    body = err.body()
    head = [
        b"HTTP/1.1 " + status,
        b"content-type: application/json",
        b"content-length: " + str(len(body)).encode(),
        b"connection: close",
        *(name + b": " + value for name, value in extra),
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class DeadlineProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with header and body deadlines and an OpenAI-shaped 503 cap.
    ``protocol_class(settings)`` makes the subclass that carries the settings."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int | None = None
    _rejected_logged_at = -LOG_EVERY_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = _IDLE
        self._deadline: asyncio.TimerHandle | None = None
        self._served_app = self.app

    # -- the deadlines ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # the first request's headers are due this long after the connection opens
        self._deadline = self.loop.call_later(self.header_timeout_s, self._expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # still inside a request after this read: its deadline starts now (unless one runs)
        if self._phase != _IDLE and self._deadline is None and not self.transport.is_closing():
            timeout = self.header_timeout_s if self._phase == _HEADERS else self.body_timeout_s
            self._deadline = self.loop.call_later(timeout, self._expired)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = _HEADERS

    def on_headers_complete(self) -> None:
        self._disarm()
        self._phase = _BODY
        cap = self.max_connections
        if cap is not None and (len(self.connections) > cap or len(self.tasks) >= cap):
            self.app = _overloaded
            try:
                super().on_headers_complete()
            finally:
                self.app = self._served_app
            self._log_rejected(cap)
            return
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._phase = _IDLE
        super().on_message_complete()

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        answering = cycle is not None and not cycle.response_complete
        if self._phase == _BODY:
            if not answering:  # answered without reading the body, which is still coming
                self.transport.close()
                return
            # the app is running and reading: it answers 408 itself, then the connection closes
            cycle.scope[BODY_DEADLINE] = self.body_timeout_s  # type: ignore[literal-required]
            cycle.keep_alive = False
            cycle.message_event.set()
            return
        if answering:  # a pipelined request stalled behind an answer: close after the answer
            cycle.keep_alive = False
            return
        if self._phase == _HEADERS:  # part of a request came: say why it is being closed
            err = RequestTimeout(
                f"The request's headers did not arrive within {self.header_timeout_s:g} s."
            )
            extra = list(self.server_state.default_headers)
            self.transport.write(_raw_response(b"408 Request Timeout", err, extra))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """The parser's 400 (uvicorn's is text/plain), then close, as uvicorn does."""
        err = InvalidRequest(f"{msg} The request line or a header is malformed.")
        extra = list(self.server_state.default_headers)
        self.transport.write(_raw_response(b"400 Bad Request", err, extra))
        self.transport.close()

    def _log_rejected(self, cap: int) -> None:
        now = time.monotonic()
        if now - DeadlineProtocol._rejected_logged_at >= LOG_EVERY_S:
            DeadlineProtocol._rejected_logged_at = now
            log.warning("connection cap reached (%d): answering 503 server_overloaded", cap)


async def _overloaded(scope: Any, receive: Any, send: Any) -> None:
    body = Overloaded("The gateway is at its connection limit; retry shortly.").body()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                (b"retry-after", b"1"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def protocol_class(settings: Settings) -> type[DeadlineProtocol]:
    """The protocol for uvicorn's ``http=``, with the deadlines and the cap of ``settings``."""
    return type(
        "EffgateHttpProtocol",
        (DeadlineProtocol,),
        {
            "header_timeout_s": settings.header_timeout_s,
            "body_timeout_s": settings.body_timeout_s,
            "max_connections": settings.max_connections,
        },
    )


def server_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The ``uvicorn.Config`` effgate serves ``app`` with: httptools under the deadlines above,
    the keep-alive timeout and the graceful-shutdown deadline from ``settings``."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": protocol_class(settings),
        "lifespan": "on",
        "access_log": settings.access_log,
        "log_level": settings.log_level,
        # effgate reads no client address, so X-Forwarded-* rewriting is a layer for nothing
        "proxy_headers": False,
        "server_header": False,
    }
    options.update(overrides)
    config = uvicorn.Config(app, **options)
    # typed int in uvicorn, used as seconds by call_later and wait_for: fractions work
    config.timeout_keep_alive = settings.keep_alive_s  # type: ignore[assignment]
    config.timeout_graceful_shutdown = settings.shutdown_timeout_s  # type: ignore[assignment]
    return config
