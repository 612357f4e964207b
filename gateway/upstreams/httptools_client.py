"""The default client for OpenAI-compatible upstreams: HTTP/1.1 on asyncio, parsed by httptools.

Why not only aiohttp (still available, ``EFFGATE_HTTP_CLIENT=aiohttp``): measured on this
project's benchmark machine, an aiohttp call costs about 0.3 ms of CPU at concurrency 1 and
0.15 ms at saturation, most of the gateway's whole budget, in request building, URL and
header handling, timers and tracing hooks an LLM gateway does not use. This client does the
one thing needed, the way ``benchmarks/loadgen.py`` and uvicorn do: one ``asyncio.Protocol``
per connection, the request written in one call, the response parsed by httptools (llhttp,
the parser behind uvicorn and Node.js), which handles Content-Length, chunked encoding and
keep-alive rules.

What it does: a bounded pool of keep-alive connections per upstream (waiting for a free one
counts against the caller's deadline), TLS with the system's trust store, a connect timeout,
gzip/deflate bodies, connections dropped when the server says ``Connection: close``, when a
response was not read to its end (closing it is what stops a model server generating for a
client that has gone), and when the server closes them idle. A request that fails on a reused
connection before any byte of the answer came back (the server closed it as we reused it) is
sent again once on a new connection. What it does not do: proxies, redirects, cookies, HTTP/2
(use ``EFFGATE_HTTP_CLIENT=httpx`` for a proxy).

``_map_errors`` is this client's one error-mapping seam, the twin of ``map_httpx_errors``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

from gateway.errors import ConnectFailed, ProtocolFailed, TimedOut, UpstreamError, upstream_status
from gateway.upstreams.base import MAX_ERROR_BODY, PASS_HEADERS, Reply, Stream, encode_body
from policies.compiled import ModelEntry

MAX_BODY = 64 * 1024 * 1024  # a JSON answer larger than this is not an LLM's
HIGH_WATER = 1024 * 1024  # buffered stream bytes before the socket is paused
IDLE_EXPIRY_S = 30.0


class _Stale(Exception):
    """A reused connection closed before it answered: the request may be sent again."""


class _Conn(asyncio.Protocol):
    """One HTTP/1.1 connection, one response at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.got_bytes = False
        self.head: asyncio.Future[None] = self.loop.create_future()
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.reading_paused = False
        self.length_known = False
        self.server_keep_alive = False

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ProtocolFailed(f"malformed HTTP response ({exc})"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.complete:
            return
        if not self.head.done() and not self.got_bytes and self.reused:
            self._fail(_Stale())
        elif self.head.done() and not self.length_known and exc is None:
            self.on_message_complete()  # a body delimited by the end of the connection
        else:
            self._fail(ProtocolFailed("the upstream closed the connection mid-response"))

    def pause_writing(self) -> None:  # requests are small; nothing to throttle
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks ------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        if key in self.headers:
            self.headers[key] += ", " + value.decode("latin-1")
        else:
            self.headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        # read now: once the message is complete the parser has reset and says False
        self.server_keep_alive = self.parser.should_keep_alive()
        h = self.headers
        self.length_known = "content-length" in h or "chunked" in h.get("transfer-encoding", "")
        if not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and self.transport is not None and not self.reading_paused:
            self.transport.pause_reading()
            self.reading_paused = True
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    # -- for the client -----------------------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        if not self.head.done():
            self.head.set_exception(exc)
            self.head.exception()  # retrieved: a caller that has gone must not log it
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def next_chunk(self) -> bytes | None:
        """The next body bytes; None at the end of the message."""
        while not self.chunks:
            if self.error is not None:
                raise self.error
            if self.complete:
                return None
            self.waiter = self.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        data = self.chunks.popleft()
        self.buffered -= len(data)
        if self.reading_paused and self.buffered <= HIGH_WATER // 2 and self.transport:
            self.transport.resume_reading()
            self.reading_paused = False
        return data

    @property
    def keep_alive(self) -> bool:
        return (
            self.complete
            and not self.closed
            and self.error is None
            and self.server_keep_alive
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class _Pool:
    """Keep-alive connections to one origin, at most ``limit`` of them at a time."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None, limit: int) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.idle: list[_Conn] = []
        self.slots = asyncio.Semaphore(limit)
        self.open: set[_Conn] = set()

    async def acquire(self, connect_s: float) -> _Conn:
        await self.slots.acquire()
        try:
            loop = asyncio.get_running_loop()
            now = loop.time()
            while self.idle:
                conn = self.idle.pop()
                if not conn.closed and now - conn.idle_since < IDLE_EXPIRY_S:
                    conn.reused = True
                    conn._reset()
                    return conn
                self._drop(conn)
            return await self._connect(loop, connect_s)
        except BaseException:
            self.slots.release()
            raise

    async def _connect(self, loop: asyncio.AbstractEventLoop, connect_s: float) -> _Conn:
        async with asyncio.timeout(connect_s):
            _, conn = await loop.create_connection(
                lambda: _Conn(loop),
                self.host,
                self.port,
                ssl=self.tls,
                server_hostname=self.host if self.tls is not None else None,
            )
        self.open.add(conn)
        return conn

    def release(self, conn: _Conn) -> None:
        """Back to the pool when its response was read to the end, else closed."""
        if conn.keep_alive:
            conn.idle_since = asyncio.get_running_loop().time()
            self.idle.append(conn)
        else:
            self._drop(conn)
        self.slots.release()

    def _drop(self, conn: _Conn) -> None:
        if conn.complete and conn.transport is not None:
            conn.closed = True
            conn.transport.close()  # answered in full: a plain FIN
        else:
            conn.abort()  # mid-answer: a reset, which stops the server generating
        self.open.discard(conn)

    def close(self) -> None:
        for conn in list(self.open):
            self._drop(conn)
        self.idle.clear()


@contextmanager
def _map_errors(name: str) -> Iterator[None]:
    """Socket and TLS failures to gateway errors that name the upstream, never its URL."""
    try:
        yield
    except UpstreamError:
        raise
    except TimeoutError as exc:
        raise TimedOut(f"upstream {name!r} timed out") from exc
    except (ConnectionRefusedError, socket.gaierror) as exc:
        raise ConnectFailed(f"upstream {name!r} is unreachable") from exc
    except (OSError, ssl.SSLError) as exc:
        raise ProtocolFailed(
            f"upstream {name!r} failed mid-request ({type(exc).__name__})"
        ) from exc


def _decoder(encoding: str) -> Any:
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    raise ProtocolFailed(f"upstream sent a body encoded as {encoding!r}")


class _Response:
    """An upstream response being read; owns its connection until released."""

    __slots__ = ("conn", "pool", "name", "released", "decoder")

    def __init__(self, conn: _Conn, pool: _Pool, name: str) -> None:
        self.conn, self.pool, self.name = conn, pool, name
        self.released = False
        self.decoder = _decoder(conn.headers.get("content-encoding", "").strip().lower())

    async def read(self, limit: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        with _map_errors(self.name):
            while (chunk := await self.conn.next_chunk()) is not None:
                parts.append(chunk)
                size += len(chunk)
                if size >= limit:
                    break
        data = b"".join(parts)
        if self.decoder is not None:
            data = self.decoder.decompress(data) + self.decoder.flush()
        return data

    async def chunks(self) -> AsyncIterator[bytes]:
        with _map_errors(self.name):
            while (chunk := await self.conn.next_chunk()) is not None:
                yield self.decoder.decompress(chunk) if self.decoder is not None else chunk

    def picked_headers(self) -> dict[str, str]:
        h = self.conn.headers
        return {k: v for k in PASS_HEADERS if (v := h.get(k)) is not None}

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.pool.release(self.conn)


async def _status_error(resp: _Response) -> UpstreamError:
    raw = await resp.read(MAX_ERROR_BODY)
    return upstream_status(resp.conn.status, raw[:MAX_ERROR_BODY], resp.picked_headers())


class _HttptoolsStream:
    __slots__ = ("_resp",)

    def __init__(self, resp: _Response) -> None:
        self._resp = resp

    def chunks(self) -> AsyncIterator[bytes]:
        return self._resp.chunks()

    async def aclose(self) -> None:
        self._resp.release()  # a half-read response closes its connection


class HttptoolsUpstream:
    """An OpenAI-compatible server (OpenAI, vLLM, SGLang, llama.cpp, Ollama ...): one pool."""

    def __init__(self, entry: ModelEntry) -> None:
        self.name = entry.id
        self._connect_s = entry.timeouts.connect_s
        url = urlsplit((entry.base_url or "").rstrip("/"))
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"model {entry.id!r}: base_url must be an http(s) URL")
        tls = ssl.create_default_context() if url.scheme == "https" else None
        port = url.port or (443 if tls is not None else 80)
        self._pool = _Pool(url.hostname, port, tls, entry.max_connections)
        self._prefix = url.path
        default_port = port == (443 if tls is not None else 80)
        host = url.hostname if default_port else f"{url.hostname}:{port}"
        head = [
            b"host: " + host.encode("idna"),
            b"content-type: application/json",
            b"accept-encoding: identity",
            b"user-agent: effgate",
        ]
        key = os.environ.get(entry.api_key_env) if entry.api_key_env else None
        if key:
            head.append(b"authorization: Bearer " + key.encode("latin-1"))
        self._head = b"\r\n".join(head) + b"\r\n"

    def _request(self, path: str, body: bytes) -> bytes:
        return (
            b"POST %s HTTP/1.1\r\n%scontent-length: %d\r\n\r\n"
            % ((self._prefix + path).encode(), self._head, len(body))
        ) + body

    async def _send(self, path: str, body: dict[str, Any]) -> _Response:
        """Send the request and wait for the response head; retried once on a stale socket."""
        raw = self._request(path, encode_body(body))
        for attempt in (0, 1):
            conn = await self._pool.acquire(self._connect_s)
            try:
                assert conn.transport is not None
                conn.transport.write(raw)
                await conn.head
            except _Stale:
                self._pool.release(conn)
                if attempt == 0:
                    continue
                raise ProtocolFailed(f"upstream {self.name!r} closed the connection") from None
            except BaseException:
                conn.abort()  # not read to the end, or cancelled: never reused
                self._pool.release(conn)
                raise
            return _Response(conn, self._pool, self.name)
        raise AssertionError("unreachable")

    async def complete(self, path: str, body: dict[str, Any], deadline_s: float) -> Reply:
        with _map_errors(self.name):
            try:
                async with asyncio.timeout(deadline_s):
                    resp = await self._send(path, body)
                    try:
                        status = resp.conn.status
                        if status >= 400:
                            raw = await resp.read(MAX_ERROR_BODY)
                            raise upstream_status(
                                status, raw[:MAX_ERROR_BODY], resp.picked_headers()
                            )
                        data = await resp.read(MAX_BODY + 1)
                        if len(data) > MAX_BODY:
                            raise ProtocolFailed(f"upstream {self.name!r} sent more than 64 MB")
                        return Reply(status, data, resp.picked_headers())
                    finally:
                        resp.release()
            except TimeoutError as exc:
                raise TimedOut(
                    f"upstream {self.name!r} did not answer in {deadline_s:g} s"
                ) from exc

    async def open_stream(self, body: dict[str, Any], first_byte_s: float) -> Stream:
        with _map_errors(self.name):
            try:
                async with asyncio.timeout(first_byte_s):
                    resp = await self._send("/chat/completions", body)
            except TimeoutError as exc:
                raise TimedOut(
                    f"upstream {self.name!r} sent no response in {first_byte_s:g} s"
                ) from exc
            if resp.conn.status >= 400:
                try:
                    raise await _status_error(resp)
                finally:
                    resp.release()
        return _HttptoolsStream(resp)

    async def aclose(self) -> None:
        self._pool.close()
        await asyncio.sleep(0)  # let the transports run their connection_lost callbacks
