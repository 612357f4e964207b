"""The fake OpenAI upstream, driven over loopback with httpx, raw sockets and the openai SDK."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageFunctionToolCall

from fake_upstream.replies import split_pieces
from tests.fake_upstream.conftest import (
    MODELS,
    SEARCH,
    WEATHER,
    chat,
    sse_events,
)

# -- replies -------------------------------------------------------------------------------


def test_chat_json_shape_and_usage(http: httpx.Client) -> None:
    r = http.post("/chat/completions", json=chat(temperature=0.2))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert int(r.headers["content-length"]) == len(r.content)
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "m-small"
    assert body["system_fingerprint"] == "fp_fake"
    assert isinstance(body["created"], int) and abs(body["created"] - time.time()) < 60
    (choice,) = body["choices"]
    content = choice["message"]["content"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert content.startswith("m-small says: hello there world hello")
    usage = body["usage"]
    assert usage["prompt_tokens"] == 3
    assert usage["completion_tokens"] == len(content.split()) == 16
    assert usage["total_tokens"] == 19


def test_prompt_tokens_count_every_message_and_text_part(http: httpx.Client) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "one two"}, {"type": "image_url"}]},
        {"role": "assistant", "content": None},
        {"role": "user", "content": "three"},
    ]
    body = http.post("/chat/completions", json={"model": "m-big", "messages": messages}).json()
    assert body["usage"]["prompt_tokens"] == 5
    assert body["choices"][0]["message"]["content"].startswith("m-big says: be brief one two")


def test_replies_are_deterministic(http: httpx.Client) -> None:
    first = http.post("/chat/completions", json=chat("same prompt")).json()
    second = http.post("/chat/completions", json=chat("same prompt")).json()
    other = http.post("/chat/completions", json=chat("another prompt")).json()
    assert first["choices"] == second["choices"] and first["usage"] == second["usage"]
    assert first["id"] != second["id"]
    assert first["choices"] != other["choices"]


def test_openai_sdk_chat(sdk: openai.OpenAI) -> None:
    out = sdk.chat.completions.create(
        model="m-big", messages=[{"role": "user", "content": "hi you"}]
    )
    assert out.model == "m-big"
    assert out.choices[0].message.content is not None
    assert out.choices[0].message.content.startswith("m-big says: hi you")
    assert out.usage is not None and out.usage.total_tokens == 2 + 16


@pytest.mark.parametrize("include_usage", [False, True])
def test_sdk_stream_matches_json(sdk: openai.OpenAI, include_usage: bool) -> None:
    messages: Any = [{"role": "user", "content": "stream me please"}]
    whole = sdk.chat.completions.create(model="m-small", messages=messages)
    options: Any = {"include_usage": True} if include_usage else openai.omit
    chunks = list(
        sdk.chat.completions.create(
            model="m-small", messages=messages, stream=True, stream_options=options
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [
        c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content
    ]
    assert "".join(pieces) == whole.choices[0].message.content
    assert {c.id for c in chunks} == {chunks[0].id}
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    if include_usage:
        last = chunks[-1]
        assert last.choices == [] and last.usage is not None
        assert last.usage.completion_tokens == len(pieces)
        assert last.usage == whole.usage
        assert chunks[-2].choices[0].finish_reason == "stop"
        assert all(c.usage is None for c in chunks[:-1])
    else:
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert all(c.usage is None for c in chunks)


def test_stream_wire_format(http: httpx.Client) -> None:
    body = chat(stream=True, stream_options={"include_usage": True}, max_tokens=4)
    with http.stream("POST", "/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["transfer-encoding"] == "chunked"
        raw = r.read().decode()
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks[1:5]]
    assert pieces == ["m-small", " says:", " hello", " there"]
    finish = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    assert chunks[5]["choices"] == [finish]
    assert chunks[6]["choices"] == [] and chunks[6]["usage"]["completion_tokens"] == 4
    assert chunks[6]["usage"]["total_tokens"] == 7


def test_tool_call_json(sdk: openai.OpenAI) -> None:
    out = sdk.chat.completions.create(
        model="m-small", messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER, SEARCH]
    )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.id.startswith("call_") and call.type == "function"
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert set(args) == {"city", "days", "unit", "hourly", "tags"}
    assert isinstance(args["city"], str) and isinstance(args["days"], int)
    assert args["unit"] == "c" and args["hourly"] is True and isinstance(args["tags"][0], str)
    assert out.usage is not None
    assert out.usage.completion_tokens == len(split_pieces(call.function.arguments))


def test_tool_choice_named_and_none(http: httpx.Client) -> None:
    named = {"type": "function", "function": {"name": "search"}}
    body = http.post("/chat/completions", json=chat(tools=[WEATHER, SEARCH], tool_choice=named))
    call = body.json()["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "search"
    assert json.loads(call["function"]["arguments"]) == {"q": "sample q"}
    text = http.post("/chat/completions", json=chat(tools=[WEATHER], tool_choice="none")).json()
    assert text["choices"][0]["finish_reason"] == "stop"
    unknown = {"type": "function", "function": {"name": "nope"}}
    bad = http.post("/chat/completions", json=chat(tools=[WEATHER], tool_choice=unknown))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tool_choice"


def test_tool_call_stream_matches_json(sdk: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "weather?"}]
    whole = sdk.chat.completions.create(model="m-small", messages=messages, tools=[WEATHER])
    expected = (whole.choices[0].message.tool_calls or [])[0]
    assert isinstance(expected, ChatCompletionMessageFunctionToolCall)
    stream: Any = sdk.chat.completions.create(
        model="m-small", messages=messages, tools=[WEATHER], stream=True
    )
    deltas = [c.choices[0] for c in stream]
    first = (deltas[0].delta.tool_calls or [])[0]
    assert first.index == 0 and first.id == expected.id and first.function is not None
    assert first.function.name == "get_weather" and first.function.arguments == ""
    args = ""
    for d in deltas[1:]:
        for tc in d.delta.tool_calls or []:
            assert tc.index == 0 and tc.id is None and tc.function is not None
            args += tc.function.arguments or ""
    assert len(deltas) > 3
    assert args == expected.function.arguments
    assert deltas[-1].finish_reason == "tool_calls"


def test_answer_after_tool_result(http: httpx.Client) -> None:
    messages = [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function"}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny 21C"},
    ]
    body = {"model": "m-small", "messages": messages, "tools": [WEATHER]}
    out = http.post("/chat/completions", json=body).json()["choices"][0]
    assert out["finish_reason"] == "stop"
    assert out["message"]["content"].startswith("m-small says: the tool returned sunny 21C")


def test_response_format_json_object_and_schema(http: httpx.Client) -> None:
    obj = http.post("/chat/completions", json=chat(response_format={"type": "json_object"}))
    assert json.loads(obj.json()["choices"][0]["message"]["content"])["answer"].startswith(
        "m-small says:"
    )
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "score": {"type": "number", "minimum": 3},
            "owner": {"$ref": "#/$defs/Person"},
            "note": {"anyOf": [{"type": "null"}, {"type": "integer"}]},
        },
        "required": ["name", "score", "owner", "note"],
        "$defs": {
            "Person": {
                "type": "object",
                "properties": {"age": {"type": ["integer", "null"]}, "kind": {"const": "human"}},
                "required": ["age", "kind"],
            }
        },
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    out = http.post("/chat/completions", json=chat(response_format=fmt)).json()
    content = out["choices"][0]["message"]["content"]
    owner = {"age": 1, "kind": "human"}
    assert json.loads(content) == {"name": "sample name", "score": 3.0, "owner": owner, "note": 1}
    assert out["usage"]["completion_tokens"] == len(content.split())


def test_n_choices(http: httpx.Client) -> None:
    body = http.post("/chat/completions", json=chat("a b c", n=2)).json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    texts = [c["message"]["content"] for c in body["choices"]]
    assert texts[0] != texts[1]
    assert body["usage"]["completion_tokens"] == sum(len(t.split()) for t in texts) == 32


def test_n_choices_stream(http: httpx.Client) -> None:
    body = chat("a b c", n=2, stream=True, stream_options={"include_usage": True})
    events = sse_events(http.post("/chat/completions", json=body).text)
    chunks = [json.loads(e) for e in events[:-1]]
    text = {0: "", 1: ""}
    for c in chunks[:-1]:
        for choice in c["choices"]:
            text[choice["index"]] += choice["delta"].get("content") or ""
    whole = http.post("/chat/completions", json=chat("a b c", n=2)).json()
    assert [text[0], text[1]] == [c["message"]["content"] for c in whole["choices"]]
    assert chunks[-1]["usage"] == whole["usage"]


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_truncates(http: httpx.Client, field: str) -> None:
    body = http.post("/chat/completions", json={**chat(), field: 5}).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert len(choice["message"]["content"].split()) == 5
    assert body["usage"]["completion_tokens"] == 5
    bad = http.post("/chat/completions", json={**chat(), field: 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == field


def test_unknown_model_404(http: httpx.Client, sdk: openai.OpenAI) -> None:
    r = http.post("/chat/completions", json={**chat(), "model": "gpt-9"})
    assert r.status_code == 404
    assert r.json() == {
        "error": {
            "message": "The model `gpt-9` does not exist or you do not have access to it.",
            "type": "not_found_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
    with pytest.raises(openai.NotFoundError) as info:
        sdk.embeddings.create(model="gpt-9", input="x")
    assert info.value.code == "model_not_found"


def test_bad_requests_are_openai_shaped(http: httpx.Client) -> None:
    cases = [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (orjson.dumps({"messages": []}), 400, "model"),
        (orjson.dumps({"model": "m-small", "messages": []}), 400, "messages"),
        (orjson.dumps({"model": "m-small", "messages": "hi"}), 400, "messages"),
        (orjson.dumps(chat(n=0)), 400, "n"),
    ]
    for raw, status, param in cases:
        r = http.post("/chat/completions", content=raw)
        assert r.status_code == status, raw
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param
        assert set(error) == {"message", "type", "param", "code"}
    assert http.get("/nowhere").status_code == 404
    assert http.get("/chat/completions").status_code == 405


def test_embeddings(http: httpx.Client, sdk: openai.OpenAI) -> None:
    body = {"model": "m-small", "input": ["one two", "three"], "dimensions": 8}
    out = http.post("/embeddings", json=body).json()
    again = http.post("/embeddings", json=body).json()
    assert out == again
    assert out["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    vectors = [d["embedding"] for d in out["data"]]
    assert [d["index"] for d in out["data"]] == [0, 1] and vectors[0] != vectors[1]
    assert all(len(v) == 8 and math.isclose(math.hypot(*v), 1.0) for v in vectors)
    via_sdk = sdk.embeddings.create(model="m-small", input=["one two", "three"], dimensions=8)
    for got, want in zip(via_sdk.data, vectors, strict=True):
        assert got.embedding == pytest.approx(want, abs=1e-6)
    ids = http.post("/embeddings", json={"model": "m-small", "input": [1, 2, 3]}).json()
    assert ids["usage"]["prompt_tokens"] == 3 and len(ids["data"][0]["embedding"]) == 64
    bad = http.post("/embeddings", json={"model": "m-small", "input": [{}]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"


def test_models_and_health(http: httpx.Client, sdk: openai.OpenAI) -> None:
    assert [m.id for m in sdk.models.list()] == list(MODELS)
    assert http.get("/../healthz").json() == {"status": "ok"}


def test_legacy_completions(http: httpx.Client, sdk: openai.OpenAI) -> None:
    out = sdk.completions.create(model="m-small", prompt="say something", max_tokens=4)
    assert out.object == "text_completion" and out.choices[0].finish_reason == "length"
    assert out.choices[0].text == " m-small says: say something"
    assert out.usage is not None and out.usage.prompt_tokens == 2
    assert out.usage.completion_tokens == 4
    body = {"model": "m-small", "prompt": "x y", "stream": True}
    body["stream_options"] = {"include_usage": True}
    events = sse_events(http.post("/completions", json=body).text)
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["text"] for c in chunks[:-1])
    assert len(text.split()) == chunks[-1]["usage"]["completion_tokens"] == 16
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
