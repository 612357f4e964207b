"""OpenAI-compatible upstreams over aiohttp (``EFFGATE_HTTP_CLIENT=aiohttp``), one session each.

Measured here (``benchmarks/clients.py``, and the overhead benchmark's profile): an httpx call
costs 1.4 to 3 ms of CPU on this class of machine and grows with concurrency (httpcore walks
every pooled connection per request); aiohttp costs 0.2 to 0.5 ms. The httpx client
(``gateway.upstreams.httpx_client``) stays available with ``EFFGATE_HTTP_CLIENT=httpx``.
``map_aiohttp_errors`` is this client's one error-mapping seam, the twin of
``map_httpx_errors``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import orjson
import yarl

from gateway.errors import (
    ConnectFailed,
    ProtocolFailed,
    TimedOut,
    UpstreamStatusError,
    upstream_status,
)
from gateway.upstreams.base import MAX_ERROR_BODY, Reply, Stream, encode_body, picked_headers
from policies.compiled import ModelEntry


@contextmanager
def map_aiohttp_errors(name: str) -> Iterator[None]:
    """aiohttp exceptions to gateway errors that name the upstream, never its URL or key."""
    try:
        yield
    except TimeoutError as exc:  # aiohttp's own timeouts and ours (asyncio.timeout)
        raise TimedOut(f"upstream {name!r} timed out") from exc
    except aiohttp.ClientConnectorError as exc:
        raise ConnectFailed(f"upstream {name!r} is unreachable") from exc
    except aiohttp.ClientError as exc:  # reset, disconnect, truncated body, bad response
        raise ProtocolFailed(
            f"upstream {name!r} failed mid-request ({type(exc).__name__})"
        ) from exc


async def _status_error(resp: aiohttp.ClientResponse) -> UpstreamStatusError:
    body = await resp.content.read(MAX_ERROR_BODY)
    return upstream_status(resp.status, body, picked_headers(resp.headers))


class _AiohttpStream:
    __slots__ = ("_resp", "_name")

    def __init__(self, resp: aiohttp.ClientResponse, name: str) -> None:
        self._resp = resp
        self._name = name

    async def chunks(self) -> AsyncIterator[bytes]:
        with map_aiohttp_errors(self._name):
            async for chunk in self._resp.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        # release() would return a half-read connection to the pool; close() drops it, which
        # is what stops a model server generating for a client that has gone
        if not self._resp.closed:
            self._resp.close()


class AiohttpUpstream:
    """An OpenAI-compatible server reached through one pooled ``aiohttp.ClientSession``."""

    def __init__(self, entry: ModelEntry) -> None:
        self.name = entry.id
        t = entry.timeouts
        self._base = (entry.base_url or "").rstrip("/")
        self._urls: dict[str, yarl.URL] = {}  # parsed once per path, not per request
        headers = {
            "content-type": "application/json",
            "accept-encoding": "identity",
            "user-agent": "effgate",
        }
        key = os.environ.get(entry.api_key_env) if entry.api_key_env else None
        if key:
            headers["authorization"] = f"Bearer {key}"
        self._headers = headers
        # first-byte, idle and total deadlines are enforced by the caller and the relay;
        # these are the socket-level backstops
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=t.connect_s, sock_connect=t.connect_s, sock_read=t.total_s
        )
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=entry.max_connections, limit_per_host=0, keepalive_timeout=30
            ),
            headers=headers,
            timeout=self._timeout,
            json_serialize=lambda o: orjson.dumps(o).decode(),
            # one session serves every tenant: an upstream's Set-Cookie must never ride along
            # on another tenant's request
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    def _url(self, path: str) -> yarl.URL:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = yarl.URL(self._base + path)
        return url

    async def complete(self, path: str, body: dict[str, Any], deadline_s: float) -> Reply:
        with map_aiohttp_errors(self.name):
            async with (
                asyncio.timeout(deadline_s),
                self._session.post(self._url(path), data=encode_body(body)) as resp,
            ):
                if resp.status >= 400:
                    raise await _status_error(resp)
                data = await resp.read()
                return Reply(resp.status, data, picked_headers(resp.headers))

    async def open_stream(self, body: dict[str, Any], first_byte_s: float) -> Stream:
        url = self._url("/chat/completions")
        with map_aiohttp_errors(self.name):
            try:
                async with asyncio.timeout(first_byte_s):
                    resp = await self._session.post(url, data=encode_body(body))
            except TimeoutError as exc:
                raise TimedOut(
                    f"upstream {self.name!r} sent no response in {first_byte_s:g} s"
                ) from exc
            if resp.status >= 400:
                try:
                    raise await _status_error(resp)
                finally:
                    resp.close()
        return _AiohttpStream(resp, self.name)

    async def aclose(self) -> None:
        await self._session.close()
        await asyncio.sleep(0)  # let the connector close its transports
