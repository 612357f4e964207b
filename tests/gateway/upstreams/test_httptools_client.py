"""The httptools client against servers that misbehave in the ways real ones do.

Each test runs a small asyncio server on loopback whose answers are scripted byte for byte
(per connection, per request), so keep-alive reuse, a server closing an idle connection just
as it is reused, bodies ended by closing the connection, compression and pool limits are all
exercised on real sockets.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from gateway.errors import ConnectFailed, ProtocolFailed, TimedOut, UpstreamStatusError
from gateway.upstreams.httptools_client import HttptoolsUpstream
from policies.compiled import ModelEntry, Timeouts
from tests.gateway.conftest import closed_port

pytestmark = pytest.mark.anyio

OK = orjson.dumps({"object": "chat.completion", "choices": []})


def http(body: bytes = OK, *, status: int = 200, extra: bytes = b"") -> bytes:
    reason = b"OK" if status < 400 else b"Error"
    return b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        status,
        reason,
        len(body),
        extra,
        body,
    )


# (connection number, request number on it) -> bytes to send, and whether to close after
Script = Callable[[int, int], tuple[bytes, bool]]


@dataclass
class Server:
    port: int = 0
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[Server]:
    server = Server()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        number, n = server.connections, 0
        try:
            while (request := await _read_request(reader)) is not None:
                n += 1
                server.requests.append(request)
                data, close = script(number, n)
                if data:
                    writer.write(data)
                    await writer.drain()
                if close:
                    break
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    server.port = srv.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        srv.close()
        await srv.wait_closed()


def entry(base_url: str, *, max_connections: int = 8) -> ModelEntry:
    return ModelEntry(
        id="m",
        provider="openai",
        base_url=base_url,
        upstream_model="mock",
        api_key_env=None,
        input_usd_per_mtok=1.0,
        output_usd_per_mtok=1.0,
        cached_input_usd_per_mtok=None,
        context_window=8192,
        max_output_tokens=None,
        expected_output_tokens=None,
        skill=None,
        capabilities=frozenset(),
        local_gpus=(),
        timeouts=Timeouts(connect_s=1.0, first_byte_s=5.0, idle_s=5.0, total_s=5.0),
        max_retries=0,
        max_connections=max_connections,
        price_source="policy",
        skill_source="none",
    )


def upstream(port: int, **extra: Any) -> HttptoolsUpstream:
    return HttptoolsUpstream(entry(f"http://127.0.0.1:{port}/v1", **extra))


BODY = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}


async def test_keep_alive_reuses_one_connection() -> None:
    async with scripted(lambda c, n: (http(), False)) as srv:
        up = upstream(srv.port)
        try:
            for _ in range(3):
                reply = await up.complete("/chat/completions", BODY, 5)
                assert reply.status == 200 and reply.body == OK
        finally:
            await up.aclose()
    assert srv.connections == 1 and len(srv.requests) == 3
    head = srv.requests[0].split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"post /v1/chat/completions http/1.1")
    assert b"host: 127.0.0.1:" in head and b"content-type: application/json" in head


async def test_a_connection_closed_as_it_is_reused_is_retried_once_on_a_new_one() -> None:
    """The server answers the first request, then drops the connection when it sees the
    second without answering: the race with a server's keep-alive timeout."""

    def script(conn: int, n: int) -> tuple[bytes, bool]:
        return (http(), False) if n == 1 else (b"", True)

    async with scripted(script) as srv:
        up = upstream(srv.port)
        try:
            assert (await up.complete("/chat/completions", BODY, 5)).status == 200
            assert (await up.complete("/chat/completions", BODY, 5)).status == 200
        finally:
            await up.aclose()
    assert srv.connections == 2 and len(srv.requests) == 3


async def test_a_cut_after_the_answer_began_is_not_retried() -> None:
    cut = http(b'{"object": "chat.completion", "choi')[:-10]

    def script(conn: int, n: int) -> tuple[bytes, bool]:
        return (http(), False) if n == 1 else (cut, True)

    async with scripted(script) as srv:
        up = upstream(srv.port)
        try:
            await up.complete("/chat/completions", BODY, 5)
            with pytest.raises(ProtocolFailed):
                await up.complete("/chat/completions", BODY, 5)
        finally:
            await up.aclose()
    assert len(srv.requests) == 2


async def test_connection_close_answers_are_not_reused() -> None:
    async with scripted(lambda c, n: (http(extra=b"connection: close\r\n"), True)) as srv:
        up = upstream(srv.port)
        try:
            for _ in range(2):
                assert (await up.complete("/chat/completions", BODY, 5)).body == OK
        finally:
            await up.aclose()
    assert srv.connections == 2


async def test_a_body_ended_by_closing_the_connection_is_read_whole() -> None:
    raw = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n" + OK
    async with scripted(lambda c, n: (raw, True)) as srv:
        up = upstream(srv.port)
        try:
            assert (await up.complete("/chat/completions", BODY, 5)).body == OK
        finally:
            await up.aclose()


async def test_gzip_bodies_are_decoded() -> None:
    packed = gzip.compress(OK)
    async with scripted(
        lambda c, n: (http(packed, extra=b"content-encoding: gzip\r\n"), False)
    ) as srv:
        up = upstream(srv.port)
        try:
            assert (await up.complete("/chat/completions", BODY, 5)).body == OK
        finally:
            await up.aclose()


async def test_an_unknown_encoding_is_a_protocol_failure() -> None:
    async with scripted(
        lambda c, n: (http(b"xx", extra=b"content-encoding: br\r\n"), False)
    ) as srv:
        up = upstream(srv.port)
        try:
            with pytest.raises(ProtocolFailed, match="br"):
                await up.complete("/chat/completions", BODY, 5)
        finally:
            await up.aclose()


async def test_malformed_answers_are_protocol_failures() -> None:
    async with scripted(lambda c, n: (b"HTTP/1.1 abc nonsense\r\n\r\n", True)) as srv:
        up = upstream(srv.port)
        try:
            with pytest.raises(ProtocolFailed):
                await up.complete("/chat/completions", BODY, 5)
        finally:
            await up.aclose()


async def test_error_statuses_keep_their_body_and_headers() -> None:
    body = b'{"error": {"message": "slow down"}}'
    answer = http(body, status=429, extra=b"retry-after: 3\r\nx-secret: no\r\n")
    async with scripted(lambda c, n: (answer, False)) as srv:
        up = upstream(srv.port)
        try:
            with pytest.raises(UpstreamStatusError) as info:
                await up.complete("/chat/completions", BODY, 5)
            with pytest.raises(UpstreamStatusError):
                await up.open_stream(BODY, 5)
        finally:
            await up.aclose()
    assert info.value.status == 429 and info.value.body() == body
    assert info.value.headers() == {"retry-after": "3"}
    assert srv.connections == 1, "an error answer read to its end keeps the connection"


async def test_a_full_pool_makes_the_next_request_wait_within_its_deadline() -> None:
    gate = asyncio.Event()

    def script(conn: int, n: int) -> tuple[bytes, bool]:
        return (http(), False) if gate.is_set() else (b"", False)

    async with scripted(script) as srv:
        up = upstream(srv.port, max_connections=1)
        try:
            first = asyncio.ensure_future(up.complete("/chat/completions", BODY, 5))
            await asyncio.sleep(0.05)
            with pytest.raises(TimedOut):  # waits for the one connection, past its deadline
                await up.complete("/chat/completions", BODY, 0.2)
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            gate.set()
            assert (await up.complete("/chat/completions", BODY, 5)).status == 200
        finally:
            await up.aclose()
    assert srv.connections == 2, "the cancelled request's connection was not reused"


async def test_a_stream_read_to_its_end_returns_its_connection() -> None:
    events = b"data: {}\n\n" * 3 + b"data: [DONE]\n\n"
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events.split(b"\n\n")[:-1])
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    async with scripted(lambda c, n: (head + chunked + b"0\r\n\r\n", False)) as srv:
        up = upstream(srv.port)
        try:
            for _ in range(2):
                stream = await up.open_stream(BODY, 5)
                got = b"".join([c async for c in stream.chunks()])
                await stream.aclose()
                assert got.count(b"data:") == 4
        finally:
            await up.aclose()
    assert srv.connections == 1


async def test_unreachable_and_https_urls() -> None:
    up = upstream(closed_port())
    try:
        with pytest.raises(ConnectFailed):
            await up.complete("/chat/completions", BODY, 5)
    finally:
        await up.aclose()
    with pytest.raises(ValueError, match="http"):
        HttptoolsUpstream(entry("ftp://x/v1"))
    tls = HttptoolsUpstream(entry("https://api.example.com/v1"))
    assert b"host: api.example.com\r\n" in tls._request("/x", b"{}")
    await tls.aclose()
