"""Upstream model servers: the ``Upstream`` seam and the OpenAI-compatible HTTP implementation.

``map_upstream_errors`` is the one place that turns httpx exceptions into gateway errors
(compare httpx's own ``map_httpcore_exceptions``); nothing else catches httpx errors.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import anyio
import httpx
import orjson

from gateway.errors import UpstreamTimeout, UpstreamUnavailable
from policies.compile import ModelEntry

ErrorKind = Literal[
    "connect", "timeout", "status_429", "status_4xx", "status_5xx", "stream_cut", "protocol"
]

PASS_HEADERS = ("retry-after", "x-request-id", "openai-processing-ms")
MAX_ERROR_BODY = 64 * 1024


class UpstreamStatusError(Exception):
    """The upstream answered with an HTTP error; status and body are passed to the client as is."""

    def __init__(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        super().__init__(f"upstream returned HTTP {status}")
        self.status = status
        self.body = body
        self.headers = dict(headers)

    @property
    def kind(self) -> ErrorKind:
        if self.status == 429:
            return "status_429"
        return "status_5xx" if self.status >= 500 else "status_4xx"

    @property
    def retryable(self) -> bool:
        return self.status == 429 or self.status >= 500


class ConnectFailed(UpstreamUnavailable):
    kind: ErrorKind = "connect"


class ProtocolFailed(UpstreamUnavailable):
    kind: ErrorKind = "protocol"


class TimedOut(UpstreamTimeout):
    kind: ErrorKind = "timeout"


def error_kind(exc: BaseException) -> ErrorKind:
    if isinstance(exc, UpstreamStatusError):
        return exc.kind
    kind: ErrorKind = getattr(exc, "kind", "protocol")
    return kind


def is_retryable(exc: BaseException) -> bool:
    """Worth another try on the same upstream: connect failures, 429 and 5xx."""
    if isinstance(exc, UpstreamStatusError):
        return exc.retryable
    return isinstance(exc, ConnectFailed)


@contextmanager
def map_upstream_errors(name: str) -> Iterator[None]:
    """Turn httpx exceptions into gateway errors that name the upstream, never its URL or key."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise TimedOut(f"upstream {name!r} timed out ({type(exc).__name__})") from exc
    except (httpx.ConnectError, httpx.PoolTimeout) as exc:
        raise ConnectFailed(f"upstream {name!r} is unreachable") from exc
    except httpx.TransportError as exc:
        raise ProtocolFailed(
            f"upstream {name!r} failed mid-request ({type(exc).__name__})"
        ) from exc


@dataclass(slots=True)
class Reply:
    """A complete upstream JSON answer."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class Stream(Protocol):
    """An open upstream SSE stream: raw byte chunks in arrival order."""

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class Upstream(Protocol):
    """One model server. Each method raises ``UpstreamStatusError`` or a ``GatewayError``."""

    name: str

    async def complete(self, path: str, body: dict[str, Any], deadline_s: float) -> Reply: ...

    async def open_stream(self, body: dict[str, Any], first_byte_s: float) -> Stream: ...

    async def aclose(self) -> None: ...


class _HTTPStream:
    __slots__ = ("_resp", "_name")

    def __init__(self, resp: httpx.Response, name: str) -> None:
        self._resp = resp
        self._name = name

    async def chunks(self) -> AsyncIterator[bytes]:
        with map_upstream_errors(self._name):
            async for chunk in self._resp.aiter_raw():
                yield chunk

    async def aclose(self) -> None:
        await self._resp.aclose()


def _picked_headers(resp: httpx.Response) -> dict[str, str]:
    return {k: v for k in PASS_HEADERS if (v := resp.headers.get(k)) is not None}


async def _bounded_body(resp: httpx.Response, limit: int = MAX_ERROR_BODY) -> bytes:
    buf = bytearray()
    async for chunk in resp.aiter_raw():
        buf += chunk
        if len(buf) >= limit:
            break
    return bytes(buf[:limit])


class HTTPUpstream:
    """An OpenAI-compatible server (OpenAI, vLLM, SGLang, llama.cpp, Ollama ...): one pool."""

    def __init__(
        self,
        entry: ModelEntry,
        *,
        pool_timeout_s: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = entry.id
        t = entry.timeouts
        headers = {"content-type": "application/json", "accept-encoding": "identity"}
        key = os.environ.get(entry.api_key_env) if entry.api_key_env else None
        if key:
            headers["authorization"] = f"Bearer {key}"
        # httpx defaults (5 s everything, 100 connections) are wrong for LLM traffic: reads are
        # bounded by the total deadline here and by first-byte / idle deadlines in the relay.
        self.client = httpx.AsyncClient(
            base_url=(entry.base_url or "").rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(
                connect=t.connect_s, read=t.total_s, write=t.connect_s, pool=pool_timeout_s
            ),
            limits=httpx.Limits(
                max_connections=entry.max_connections,
                max_keepalive_connections=entry.max_connections,
                keepalive_expiry=30.0,
            ),
            transport=transport,
        )

    async def complete(self, path: str, body: dict[str, Any], deadline_s: float) -> Reply:
        req = self.client.build_request("POST", path, content=orjson.dumps(body))
        with map_upstream_errors(self.name):
            try:
                with anyio.fail_after(deadline_s):
                    resp = await self.client.send(req, stream=True)
                    try:
                        if resp.status_code >= 400:
                            raise UpstreamStatusError(
                                resp.status_code, await _bounded_body(resp), _picked_headers(resp)
                            )
                        data = await resp.aread()
                    finally:
                        await resp.aclose()
            except TimeoutError as exc:
                raise TimedOut(
                    f"upstream {self.name!r} did not answer in {deadline_s:g} s"
                ) from exc
        return Reply(resp.status_code, data, _picked_headers(resp))

    async def open_stream(self, body: dict[str, Any], first_byte_s: float) -> Stream:
        req = self.client.build_request("POST", "/chat/completions", content=orjson.dumps(body))
        with map_upstream_errors(self.name):
            try:
                with anyio.fail_after(first_byte_s):
                    resp = await self.client.send(req, stream=True)
            except TimeoutError as exc:
                raise TimedOut(
                    f"upstream {self.name!r} sent no response in {first_byte_s:g} s"
                ) from exc
            if resp.status_code >= 400:
                try:
                    raise UpstreamStatusError(
                        resp.status_code, await _bounded_body(resp), _picked_headers(resp)
                    )
                finally:
                    await resp.aclose()
        return _HTTPStream(resp, self.name)

    async def aclose(self) -> None:
        await self.client.aclose()
