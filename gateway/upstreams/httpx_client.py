"""OpenAI-compatible upstreams over httpx (``EFFGATE_HTTP_CLIENT=httpx``; aiohttp is the default).

``map_httpx_errors`` is the one place that turns httpx exceptions into gateway errors (compare
httpx's own ``map_httpcore_exceptions``); nothing else catches httpx errors.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import httpx

from gateway.errors import ConnectFailed, ProtocolFailed, TimedOut, upstream_status
from gateway.upstreams.base import MAX_ERROR_BODY, Reply, Stream, encode_body, picked_headers
from policies.compiled import ModelEntry


@contextmanager
def map_httpx_errors(name: str) -> Iterator[None]:
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


class _HTTPStream:
    __slots__ = ("_resp", "_name")

    def __init__(self, resp: httpx.Response, name: str) -> None:
        self._resp = resp
        self._name = name

    async def chunks(self) -> AsyncIterator[bytes]:
        with map_httpx_errors(self._name):
            async for chunk in self._resp.aiter_raw():
                yield chunk

    async def aclose(self) -> None:
        await self._resp.aclose()


async def _bounded_body(resp: httpx.Response, limit: int = MAX_ERROR_BODY) -> bytes:
    buf = bytearray()
    async for chunk in resp.aiter_raw():
        buf += chunk
        if len(buf) >= limit:
            break
    return bytes(buf[:limit])


class HttpxUpstream:
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
        req = self.client.build_request("POST", path, content=encode_body(body))
        with map_httpx_errors(self.name):
            try:
                with anyio.fail_after(deadline_s):
                    resp = await self.client.send(req, stream=True)
                    try:
                        if resp.status_code >= 400:
                            raise upstream_status(
                                resp.status_code,
                                await _bounded_body(resp),
                                picked_headers(resp.headers),
                            )
                        data = await resp.aread()
                    finally:
                        await resp.aclose()
            except TimeoutError as exc:
                raise TimedOut(
                    f"upstream {self.name!r} did not answer in {deadline_s:g} s"
                ) from exc
        return Reply(resp.status_code, data, picked_headers(resp.headers))

    async def open_stream(self, body: dict[str, Any], first_byte_s: float) -> Stream:
        req = self.client.build_request("POST", "/chat/completions", content=encode_body(body))
        with map_httpx_errors(self.name):
            try:
                with anyio.fail_after(first_byte_s):
                    resp = await self.client.send(req, stream=True)
            except TimeoutError as exc:
                raise TimedOut(
                    f"upstream {self.name!r} sent no response in {first_byte_s:g} s"
                ) from exc
            if resp.status_code >= 400:
                try:
                    raise upstream_status(
                        resp.status_code, await _bounded_body(resp), picked_headers(resp.headers)
                    )
                finally:
                    await resp.aclose()
        return _HTTPStream(resp, self.name)

    async def aclose(self) -> None:
        await self.client.aclose()
