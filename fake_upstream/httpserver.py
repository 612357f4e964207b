"""A small HTTP/1.1 server with socket control, for fake upstreams (httptools on asyncio).

Why not uvicorn: fault injection needs what an ASGI app cannot do: a real TCP reset
(SO_LINGER 0 + close), a chunked body cut without its terminating chunk, and knowing the
moment the client goes away. One `Connection` (an `asyncio.Protocol`) per socket parses
requests with httptools and answers them in order (keep-alive and pipelining). A `Handler`
returns either a ready `Response`, written synchronously with no task (the fast path), or a
`Job` coroutine that drives the `Connection` itself (delays, streams, faults).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import struct
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol, cast

import httptools

log = logging.getLogger(__name__)

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_SSE_HEAD = (
    b"content-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n"
)
_BAD_BODY = (
    b'{"error":{"message":"malformed HTTP request","type":"invalid_request_error",'
    b'"param":null,"code":null}}'
)
_BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_BAD_BODY), _BAD_BODY)
)


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    keep_alive: bool
    connection: int = 0  # which client connection sent it (1, 2, ... per server)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "application/json"


Job = Callable[["Connection"], Awaitable[None]]


class Handler(Protocol):
    def dispatch(self, request: Request) -> Response | Job: ...


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed, else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def head(status: int, length: int | None, content_type: str, extra: bytes, close: bool) -> bytes:
    """The status line and headers: Content-Length when `length` is known, else chunked."""
    line = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))
    if length is None:
        fields = (
            _SSE_HEAD
            if content_type == "text/event-stream"
            else (b"content-type: %s\r\ntransfer-encoding: chunked\r\n" % content_type.encode())
        )
    else:
        fields = b"content-type: %s\r\ncontent-length: %d\r\n" % (content_type.encode(), length)
    return line + fields + extra + (b"connection: close\r\n\r\n" if close else b"\r\n")


_CONNECTIONS = itertools.count(1)


class Connection(asyncio.Protocol):
    """One client socket: parse, queue, answer in order, notice when the client leaves."""

    def __init__(self, handler: Handler, registry: set[Connection]) -> None:
        self._handler, self._registry = handler, registry
        self._parser = httptools.HttpRequestParser(self)
        self._pending: deque[Request] = deque()
        self._job: asyncio.Task[None] | None = None
        self._paused: asyncio.Future[None] | None = None
        self._url, self._headers, self._body = b"", dict[str, str](), list[bytes]()
        self._current: Request | None = None
        self.closed = False
        self.number = next(_CONNECTIONS)

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._registry.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self.write(_BAD_REQUEST)
            self.cut()
            return
        self._answer_pending()

    def eof_received(self) -> bool:
        return False  # a half-closed client counts as gone: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._registry.discard(self)
        if not self.lost.done():
            self.lost.set_result(None)
        self.resume_writing()

    def pause_writing(self) -> None:
        self._paused = self._paused or asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)
        self._paused = None

    # -- httptools callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url, self._headers, self._body = b"", {}, []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        old = self._headers.get(key)
        self._headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        if self._headers.get("expect", "").lower() == "100-continue":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        path, _, query = self._url.decode("latin-1").partition("?")
        method = self._parser.get_method().decode("latin-1")
        body = b"".join(self._body)
        keep = self._parser.should_keep_alive()
        self._pending.append(Request(method, path, query, self._headers, body, keep, self.number))

    # -- answering ---------------------------------------------------------------------------
    def _answer_pending(self) -> None:
        while self._pending and self._job is None and not self.closed:
            request = self._current = self._pending.popleft()
            outcome = self._handler.dispatch(request)
            if isinstance(outcome, Response):
                self.send(outcome)
                if not request.keep_alive:
                    self.cut()
            else:
                self._job = asyncio.ensure_future(self._run(outcome, request))

    async def _run(self, job: Job, request: Request) -> None:
        try:
            await job(self)
        except Exception:
            log.exception("fake upstream job failed for %s %s", request.method, request.path)
            self.transport.abort()
        finally:
            self._job = None
        if not request.keep_alive:
            self.cut()
        else:
            self._answer_pending()

    @property
    def _close_after(self) -> bool:
        return self._current is not None and not self._current.keep_alive

    def send(self, response: Response) -> None:
        extra = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in response.headers)
        top = head(
            response.status, len(response.body), response.content_type, extra, self._close_after
        )
        self.write(top + response.body)

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def start_stream(self, status: int = 200, content_type: str = "text/event-stream") -> None:
        self.write(head(status, None, content_type, b"", self._close_after))

    def send_chunk(self, data: bytes) -> None:
        self.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end_stream(self) -> None:
        self.write(b"0\r\n\r\n")

    async def drain(self) -> None:
        """Wait while the socket's write buffer is over its high-water mark."""
        if self._paused is not None:
            await asyncio.wait((self._paused, self.lost), return_when=asyncio.FIRST_COMPLETED)

    async def sleep(self, seconds: float) -> bool:
        """Sleep, waking early if the client leaves; True while it is still connected."""
        if seconds > 0 and not self.closed:
            await asyncio.wait((self.lost,), timeout=seconds)
        return not self.closed

    def cut(self) -> None:
        """Close after flushing what was written (mid-body: the client sees it truncated)."""
        self.closed = True  # nothing more goes out, not even a pipelined request's answer
        self.transport.close()

    def reset(self) -> None:
        """Abort with a TCP RST (SO_LINGER 0), so the client reads ECONNRESET."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.closed = True
        self.transport.abort()


class HttpServer:
    """A listening socket serving one `Handler`; `aclose` also drops open connections."""

    def __init__(self, server: asyncio.Server, connections: set[Connection]) -> None:
        self._server, self._connections = server, connections
        self.port: int = server.sockets[0].getsockname()[1]

    @classmethod
    async def start(cls, handler: Handler, host: str, port: int) -> HttpServer:
        connections: set[Connection] = set()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: Connection(handler, connections), host, port, reuse_address=True, backlog=1024
        )
        return cls(server, connections)

    async def aclose(self) -> None:
        self._server.close()
        for conn in list(self._connections):
            conn.transport.abort()
        await self._server.wait_closed()
        await asyncio.sleep(0)  # let aborted jobs observe connection_lost


class ThreadedServer:
    """Runs a `Handler` on its own event loop in a daemon thread (tests, benchmarks)."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._loop = new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._server: HttpServer | None = None
        self._thread = threading.Thread(
            target=self._main, args=(handler, host, port), name="fake-http", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.port

    def _main(self, handler: Handler, host: str, port: int) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(HttpServer.start(handler, host, port))
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            self._loop.close()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._server.aclose())
        tasks = asyncio.all_tasks(self._loop)
        for task in tasks:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    def close(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
