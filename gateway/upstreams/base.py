"""The upstream seam: what the pipeline calls, whichever client sits behind it.

Each method raises a ``gateway.errors.UpstreamError`` leaf (``UpstreamStatusError`` for the
upstream's own HTTP errors), never a library exception; the one exception is
``gateway.errors.TooDeep`` (400), from ``encode_body`` before anything is sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from gateway.errors import TooDeep

PASS_HEADERS = ("retry-after", "x-request-id", "openai-processing-ms")
MAX_ERROR_BODY = 64 * 1024


def encode_body(body: Mapping[str, Any]) -> bytes:
    """The upstream request body, or ``TooDeep`` (and the upstream is never asked): orjson
    parses JSON nested 1024 levels deep but writes only 254, and a body from ``orjson.loads``
    holds only JSON types, so depth is the one way this fails."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        raise TooDeep() from None


@dataclass(slots=True)
class Reply:
    """A complete JSON answer: an upstream's, or the gateway's to its client."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class Stream(Protocol):
    """An open upstream SSE stream: raw byte chunks in arrival order."""

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class Upstream(Protocol):
    """One model server."""

    name: str

    async def complete(self, path: str, body: dict[str, Any], deadline_s: float) -> Reply: ...

    async def open_stream(self, body: dict[str, Any], first_byte_s: float) -> Stream: ...

    async def aclose(self) -> None: ...


def picked_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The upstream response headers a client may see (``PASS_HEADERS``)."""
    return {k: v for k in PASS_HEADERS if (v := headers.get(k)) is not None}
