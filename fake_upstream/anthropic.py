"""A fake Anthropic Messages API (POST /v1/messages), JSON and SSE, on the fake HTTP server.

Shows that the gateway reaches Anthropic through litellm's anthropic provider. It speaks
the wire format of https://docs.anthropic.com/en/api/messages and /messages-streaming:
401 `authentication_error` without ``x-api-key`` (or with the wrong one when `api_key` is
set) or without ``anthropic-version``; 400 without ``max_tokens``; 404 for a model outside
`models` (when given). Replies and counts follow `fake_upstream.replies`:
input_tokens = whitespace words of ``system`` and every message's text, output_tokens =
pieces sent, ``"<model> says: ..."``, truncated to ``max_tokens`` (stop_reason max_tokens).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson

from fake_upstream.httpserver import Connection, Job, Request, Response
from fake_upstream.replies import content_text, reply_pieces


def _error(status: int, kind: str, message: str) -> Response:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return Response(status, orjson.dumps(body))


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (name.encode(), orjson.dumps(payload))


@dataclass(frozen=True, slots=True)
class _Reply:
    id: str
    model: str
    pieces: tuple[str, ...]
    stop_reason: str
    input_tokens: int

    def message(self, content: list[dict[str, Any]], stop: str | None, out: int) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": out},
        }


class FakeAnthropic:
    """`Handler` for the Messages API; `requests` keeps every (headers, body) it was sent."""

    def __init__(
        self, *, api_key: str | None = None, models: Sequence[str] = (), reply_words: int = 16
    ) -> None:
        self.api_key, self.models, self.words = api_key, tuple(models), reply_words
        self.requests: list[tuple[dict[str, str], Any]] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def dispatch(self, request: Request) -> Response | Job:
        if request.path.rstrip("/") != "/v1/messages":
            return _error(404, "not_found_error", f"unknown path {request.path}")
        if request.method != "POST":
            return _error(405, "invalid_request_error", "use POST")
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            return _error(400, "invalid_request_error", "body is not valid JSON")
        with self._lock:
            self.requests.append((request.headers, body))
        key = request.headers.get("x-api-key")
        if not key or (self.api_key is not None and key != self.api_key):
            return _error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return _error(401, "authentication_error", "anthropic-version header is required")
        if not isinstance(body, dict):
            return _error(400, "invalid_request_error", "body must be a JSON object")
        reply = self._plan(body)
        if isinstance(reply, Response):
            return reply
        if body.get("stream") is True:
            return partial(self._stream, reply)
        stop = reply.stop_reason
        content = [{"type": "text", "text": "".join(reply.pieces)}]
        return Response(200, orjson.dumps(reply.message(content, stop, len(reply.pieces))))

    def _plan(self, body: dict[str, Any]) -> _Reply | Response:
        model, limit, messages = body.get("model"), body.get("max_tokens"), body.get("messages")
        if not isinstance(model, str) or not model:
            return _error(400, "invalid_request_error", "model: Field required")
        if self.models and model not in self.models:
            return _error(404, "not_found_error", f"model: {model}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            return _error(400, "invalid_request_error", "max_tokens: Field required")
        if not isinstance(messages, list) or not messages:
            return _error(400, "invalid_request_error", "messages: Field required")
        texts = [content_text(body.get("system"))]
        texts += [content_text(m.get("content")) for m in messages if isinstance(m, dict)]
        pieces = reply_pieces(model, " ".join(texts[1:]), self.words)
        stop = "max_tokens" if len(pieces) > limit else "end_turn"
        input_tokens = sum(len(t.split()) for t in texts)
        rid = f"msg_fake{next(self._ids):08d}"
        return _Reply(rid, model, tuple(pieces[:limit]), stop, input_tokens)

    async def _stream(self, reply: _Reply, conn: Connection) -> None:
        conn.start_stream()
        start = reply.message([], None, 1)
        conn.send_chunk(_event("message_start", {"type": "message_start", "message": start}))
        block = {"type": "text", "text": ""}
        begin = {"type": "content_block_start", "index": 0, "content_block": block}
        conn.send_chunk(_event("content_block_start", begin))
        conn.send_chunk(_event("ping", {"type": "ping"}))
        for piece in reply.pieces:
            delta = {"type": "text_delta", "text": piece}
            payload = {"type": "content_block_delta", "index": 0, "delta": delta}
            conn.send_chunk(_event("content_block_delta", payload))
            await conn.drain()
        conn.send_chunk(_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
        end = {
            "type": "message_delta",
            "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": len(reply.pieces)},
        }
        conn.send_chunk(_event("message_delta", end))
        conn.send_chunk(_event("message_stop", {"type": "message_stop"}))
        conn.end_stream()
