"""Wire bytes for the fake upstream: OpenAI JSON bodies and SSE events from a `Plan` (pure).

Stream events come as ``(bytes, paced)`` pairs: a paced event is the first chunk of one
generation step and waits its turn under --tokens-per-s; the others go out at once.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from collections.abc import Mapping
from typing import Any

import orjson

from fake_upstream.replies import FINGERPRINT, Choice, Plan, RequestError

Event = tuple[bytes, bool]
DONE = b"data: [DONE]\n\n"
MAX_DIMENSIONS = 8192


def _message(choice: Choice) -> dict[str, Any]:
    if choice.tool is None:
        return {"role": "assistant", "content": choice.text, "refusal": None, "annotations": []}
    function = {"name": choice.tool.name, "arguments": choice.text}
    call = {"id": choice.tool.id, "type": "function", "function": function}
    return {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None}


def chat_json(plan: Plan, rid: str, created: int) -> bytes:
    choices = [
        {"index": i, "message": _message(c), "logprobs": None, "finish_reason": c.finish_reason}
        for i, c in enumerate(plan.choices)
    ]
    return orjson.dumps(
        {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": plan.model,
            "choices": choices,
            "usage": plan.usage(),
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
        }
    )


def _first_delta(choice: Choice) -> dict[str, Any]:
    if choice.tool is None:
        return {"role": "assistant", "content": "", "refusal": None}
    function = {"name": choice.tool.name, "arguments": ""}
    call = {"index": 0, "id": choice.tool.id, "type": "function", "function": function}
    return {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None}


def _piece_delta(choice: Choice, piece: str) -> dict[str, Any]:
    if choice.tool is None:
        return {"content": piece}
    return {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}


def _stream(plan: Plan, top: dict[str, Any], choice_events: list[list[Event]]) -> list[Event]:
    """Interleave per-choice events step by step, then the usage chunk and [DONE]."""
    events: list[Event] = []
    for step in range(max(len(e) for e in choice_events)):
        first = True
        for per_choice in choice_events:
            if step < len(per_choice):
                data, paced = per_choice[step]
                events.append((data, paced and first))
                first = first and not paced
    if plan.include_usage:
        events.append((_sse({**top, "choices": [], "usage": plan.usage()}), False))
    events.append((DONE, False))
    return events


def _sse(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def chat_events(plan: Plan, rid: str, created: int) -> list[Event]:
    top: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": plan.model,
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
    }
    if plan.include_usage:
        top["usage"] = None

    def event(i: int, delta: dict[str, Any], finish: str | None) -> bytes:
        choice = {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse({**top, "choices": [choice]})

    per_choice = [
        [
            (event(i, _first_delta(c), None), False),
            *[(event(i, _piece_delta(c, p), None), True) for p in c.pieces],
            (event(i, {}, c.finish_reason), False),
        ]
        for i, c in enumerate(plan.choices)
    ]
    return _stream(plan, top, per_choice)


def completion_json(plan: Plan, rid: str, created: int) -> bytes:
    choices = [
        {"text": c.text, "index": i, "logprobs": None, "finish_reason": c.finish_reason}
        for i, c in enumerate(plan.choices)
    ]
    usage = {k: v for k, v in plan.usage().items() if not k.endswith("_details")}
    return orjson.dumps(
        {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": plan.model,
            "choices": choices,
            "usage": usage,
            "system_fingerprint": FINGERPRINT,
        }
    )


def completion_events(plan: Plan, rid: str, created: int) -> list[Event]:
    top: dict[str, Any] = {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": plan.model,
        "system_fingerprint": FINGERPRINT,
    }
    if plan.include_usage:
        top["usage"] = None

    def event(i: int, text: str, finish: str | None) -> bytes:
        choice = {"text": text, "index": i, "logprobs": None, "finish_reason": finish}
        return _sse({**top, "choices": [choice]})

    per_choice = [
        [*[(event(i, p, None), True) for p in c.pieces], (event(i, "", c.finish_reason), False)]
        for i, c in enumerate(plan.choices)
    ]
    return _stream(plan, top, per_choice)


def _vector(key: bytes, dims: int) -> list[float]:
    raw = b"".join(
        hashlib.blake2b(key, digest_size=64, salt=n.to_bytes(16, "little")).digest()
        for n in range((dims + 63) // 64)
    )
    values = [(b - 127.5) / 127.5 for b in raw[:dims]]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def embeddings_json(body: Mapping[str, Any], model: str, default_dims: int) -> bytes:
    """Unit vectors from a hash of each input; usage counts input words (or token ids)."""
    raw = body.get("input")
    single = isinstance(raw, str) or (
        isinstance(raw, list) and bool(raw) and all(isinstance(t, int) for t in raw)
    )
    inputs = [raw] if single else raw
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(400, "input must be a string or a non-empty array", param="input")
    dims = body.get("dimensions")
    dims = default_dims if dims is None else dims
    if isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= MAX_DIMENSIONS:
        raise RequestError(400, f"dimensions must be 1..{MAX_DIMENSIONS}", param="dimensions")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise RequestError(400, "encoding_format must be float or base64", param="encoding_format")
    data, tokens = [], 0
    for i, item in enumerate(inputs):
        if isinstance(item, str):
            key, tokens = item.encode(), tokens + len(item.split())
        elif isinstance(item, list) and all(isinstance(t, int) for t in item):
            key, tokens = b"ids:" + ",".join(map(str, item)).encode(), tokens + len(item)
        else:
            raise RequestError(400, "input items must be strings or token arrays", param="input")
        vector = _vector(key, dims)
        value: Any = vector
        if encoding == "base64":
            value = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": value})
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return orjson.dumps({"object": "list", "data": data, "model": model, "usage": usage})


def models_json(models: tuple[str, ...]) -> bytes:
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake-upstream"} for m in models]
    return orjson.dumps({"object": "list", "data": data})
