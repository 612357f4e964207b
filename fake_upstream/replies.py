"""What the fake upstream answers: deterministic replies and honest token counts (pure).

Counting rules (the fake's `usage` is exact under these rules, so tests can check it):
- prompt_tokens = whitespace-separated words of every message's text (string content or the
  ``text`` of content parts), or of the completions prompt / embeddings input (a token-id
  array counts one per id).
- A reply is split into *pieces*: each whitespace-separated word with the whitespace before it.
  Streams send one piece per chunk, and completion_tokens = pieces generated, summed over
  choices (for a tool call: pieces of its ``arguments`` JSON).
- Text replies are ``"<model> says: "`` followed by the prompt's words, cycled (fault markers
  left out), `reply_words` words in all; a reply to a tool result says ``"the tool returned
  ..."`` and quotes it. ``response_format`` json_object wraps that text as ``{"answer": ...}``;
  json_schema gets `sample_value` of the schema. Given ``tools`` (and tool_choice not "none",
  last message not a tool result) the reply is one call to the chosen or first tool.
- max_completion_tokens / max_tokens keep that many pieces (finish_reason "length").
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fake_upstream.faults import MARKER

FINGERPRINT = "fp_fake"
_PIECE = re.compile(r"\s*\S+")
_FALLBACK_WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")
_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}


class RequestError(Exception):
    """A request the fake rejects; rendered as an OpenAI error body with `status`."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> Any:
    """OpenAI's nested error shape for `status`."""
    if status == 429:
        kind, code = "rate_limit_error", code or "rate_limit_exceeded"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = _ERROR_TYPES.get(status, "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class Choice:
    pieces: tuple[str, ...]
    finish_reason: str
    tool: ToolCall | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything a chat or completions response says, before it is rendered."""

    model: str
    prompt_tokens: int
    choices: tuple[Choice, ...]
    stream: bool
    include_usage: bool

    @property
    def completion_tokens(self) -> int:
        return sum(len(c.pieces) for c in self.choices)

    def usage(self) -> dict[str, Any]:
        done = self.completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": done,
            "total_tokens": self.prompt_tokens + done,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def split_pieces(text: str) -> list[str]:
    return _PIECE.findall(text)


def reply_pieces(model: str, source: str, total: int, offset: int = 0, lead: str = "") -> list[str]:
    """`total` pieces: ``"<model> says: "`` + `lead` + the source's words cycled from `offset`."""
    if "[[fault:" in source:
        source = MARKER.sub(" ", source)
    words = source.split() or list(_FALLBACK_WORDS)
    chosen = f"{model} says: {lead}".split()
    need = total - len(chosen)
    if need > 0:
        start = offset % len(words)
        ring = words[start:] + words[:start] if start else words
        chosen += (ring * (need // len(ring) + 1))[:need]
    chosen = chosen[:total]
    return [chosen[0], *[" " + w for w in chosen[1:]]]


def _limit(body: Mapping[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RequestError(400, f"{name} must be a positive integer", param=name)
        return value
    return None


def _n(body: Mapping[str, Any]) -> int:
    n = body.get("n", 1)
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 128:
        raise RequestError(400, "n must be an integer between 1 and 128", param="n")
    return n


def _choice(
    pieces: list[str], limit: int | None, done: str, tool: ToolCall | None = None
) -> Choice:
    if limit is not None and len(pieces) > limit:
        return Choice(tuple(pieces[:limit]), "length", tool)
    return Choice(tuple(pieces), done, tool)


def _stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
    options = body.get("stream_options")
    usage = isinstance(options, dict) and options.get("include_usage") is True
    return body.get("stream") is True, usage


_ANSWER = re.compile(r'<answer id="([A-Z])">\n?(.*?)\n?</answer>', re.DOTALL)


def judge_text(texts: list[str], rules: tuple[tuple[str, float], ...]) -> str | None:
    """A judge's grades for a grading prompt (answers in ``<answer id="A">`` blocks, as the
    gateway's shadow evaluation writes them): each answer scores the value of the first rule
    whose text it contains, else 0.5. None when the last message holds no answers."""
    answers = _ANSWER.findall(texts[-1]) if texts else []
    if not answers:
        return None
    grades = {}
    for letter, answer in answers:
        grades[letter] = next((score for needle, score in rules if needle in answer), 0.5)
    return json.dumps(grades)


def plan_chat(
    body: Mapping[str, Any], model: str, words: int, judge: tuple[tuple[str, float], ...] = ()
) -> Plan:
    """Decide the reply to a chat completions request (text, tool call, JSON or grades)."""
    messages = body.get("messages")
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) for m in messages)
    ):
        raise RequestError(400, "messages must be a non-empty array of objects", param="messages")
    texts = [content_text(m.get("content")) for m in messages]
    prompt_tokens = sum(len(t.split()) for t in texts)
    limit, n = _limit(body), _n(body)
    last = messages[-1]
    tool = _chosen_tool(body) if last.get("role") != "tool" else None
    choices: list[Choice] = []
    for i in range(n):
        if tool is not None:
            name, args = tool
            call = ToolCall(_call_id(name, args, i), name)
            choices.append(_choice(split_pieces(args), limit, "tool_calls", call))
            continue
        graded = judge_text(texts, judge) if judge else None
        if graded is not None:
            pieces = split_pieces(graded)
        elif last.get("role") == "tool":
            pieces = reply_pieces(model, texts[-1], words, i, lead="the tool returned")
        else:
            pieces = reply_pieces(model, " ".join(texts), words, i)
        if body.get("response_format") is not None:
            pieces = split_pieces(_format(body, "".join(pieces)))
        choices.append(_choice(pieces, limit, "stop"))
    return Plan(model, prompt_tokens, tuple(choices), *_stream_flags(body))


def plan_completion(body: Mapping[str, Any], model: str, words: int) -> Plan:
    """Decide the reply to a legacy completions request (one choice per prompt and n)."""
    raw = body.get("prompt")
    prompts = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
    texts: list[str] = []
    tokens = 0
    for prompt in prompts:
        if isinstance(prompt, str):
            texts.append(prompt)
            tokens += len(prompt.split())
        elif isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            texts.append(" ".join(map(str, prompt)))
            tokens += len(prompt)
        else:
            raise RequestError(400, "prompt must be a string or token array(s)", param="prompt")
    limit, n = _limit(body), _n(body)
    choices = [
        _choice([" " + p.lstrip() for p in reply_pieces(model, text, words, i)], limit, "stop")
        for text in texts
        for i in range(n)
    ]
    return Plan(model, tokens, tuple(choices), *_stream_flags(body))


def _format(body: Mapping[str, Any], text: str) -> str:
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_object":
        return json.dumps({"answer": text})
    if kind == "json_schema" and isinstance(fmt, dict):
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return json.dumps(sample_value(schema if isinstance(schema, dict) else {}))
    return text


def _chosen_tool(body: Mapping[str, Any]) -> tuple[str, str] | None:
    tools = [
        t["function"]
        for t in body.get("tools") or ()
        if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ]
    choice = body.get("tool_choice")
    if not tools or choice == "none":
        return None
    wanted = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    for fn in tools:
        if wanted is None or fn.get("name") == wanted:
            schema = fn.get("parameters")
            args = sample_value(schema if isinstance(schema, dict) else {"type": "object"})
            return str(fn.get("name")), json.dumps(args)
    raise RequestError(400, f"tool_choice names unknown tool {wanted!r}", param="tool_choice")


def _call_id(name: str, args: str, index: int) -> str:
    digest = hashlib.blake2b(f"{name}\0{args}\0{index}".encode(), digest_size=12).hexdigest()
    return f"call_{digest}"


def sample_value(schema: Mapping[str, Any], name: str = "value", root: Any = None) -> Any:
    """A deterministic value of `schema`'s type; objects get their required properties."""
    root = schema if root is None else root
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        node: Any = root
        for part in ref[2:].split("/"):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return sample_value(node if isinstance(node, dict) else {}, name, root)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = [o for o in schema.get(key) or () if isinstance(o, dict)]
        usable = [o for o in options if o.get("type") != "null"] or options
        if usable:
            return sample_value(usable[0], name, root)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        props = schema.get("properties") or {}
        return {
            key: sample_value(props.get(key) or {}, key, root)
            for key in schema.get("required") or ()
        }
    if kind == "array":
        items = schema.get("items")
        count = max(int(schema.get("minItems") or 1), 1)
        return [sample_value(items if isinstance(items, dict) else {}, name, root)] * count
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 1.5))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return f"sample {name}"
