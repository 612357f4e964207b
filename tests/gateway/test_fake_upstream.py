"""The fake OpenAI upstream, driven over loopback with httpx, raw sockets and the openai SDK."""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageFunctionToolCall

from gateway.fake_upstream import FakeConfig, FakeUpstream
from gateway.fake_upstream_replies import split_pieces
from tests.fakes.servers import FakeUpstreamHandle, serve_fake_upstream

MODELS = ("m-small", "m-big")
_PROPS = {"city": {"type": "string"}, "days": {"type": "integer"}, "unit": {"enum": ["c", "f"]}}
_PROPS |= {"hourly": {"type": "boolean"}, "tags": {"type": "array", "items": {"type": "string"}}}
_WEATHER_ARGS = {"type": "object", "properties": {**_PROPS, "optional": {"type": "number"}}}
_WEATHER_ARGS["required"] = list(_PROPS)
WEATHER: Any = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": _WEATHER_ARGS},
}
SEARCH: Any = {
    "type": "function",
    "function": {
        "name": "search",
        "parameters": {"properties": {"q": {"type": "string"}}, "required": ["q"]},
    },
}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeUpstreamHandle]:
    with serve_fake_upstream(models=MODELS) as fake:
        yield fake


@pytest.fixture
def fake(server: FakeUpstreamHandle) -> FakeUpstreamHandle:
    server.reset()
    return server


@pytest.fixture
def http(fake: FakeUpstreamHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.base_url, timeout=10) as client:
        yield client


@pytest.fixture
def sdk(fake: FakeUpstreamHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0, timeout=10)


def chat(text: str = "hello there world", **extra: Any) -> dict[str, Any]:
    return {"model": "m-small", "messages": [{"role": "user", "content": text}], **extra}


def sse_events(raw: str) -> list[str]:
    assert raw.endswith("\n\n")
    events = raw[:-2].split("\n\n")
    assert all(e.startswith("data: ") for e in events)
    return [e[len("data: ") :] for e in events]


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


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


# -- faults --------------------------------------------------------------------------------


def test_status_faults_in_order_with_retry_after(
    fake: FakeUpstreamHandle, http: httpx.Client
) -> None:
    fake.set_faults(
        {"kind": "status", "status": 503, "count": 2},
        {"kind": "status", "status": 429, "retry_after": 7},
        {"kind": "status", "status": 429},
    )
    statuses = [http.post("/chat/completions", json=chat()) for _ in range(5)]
    assert [r.status_code for r in statuses] == [503, 503, 429, 429, 200]
    assert statuses[0].json()["error"]["type"] == "server_error"
    assert "retry-after" not in statuses[0].headers
    assert statuses[2].headers["retry-after"] == "7"
    assert statuses[3].headers["retry-after"] == "1"
    assert statuses[2].json()["error"]["code"] == "rate_limit_exceeded"
    assert fake.stats["faults_injected"] == {"status": 4}


def test_admin_fault_api(fake: FakeUpstreamHandle, http: httpx.Client) -> None:
    admin = str(fake.base_url).removesuffix("/v1")
    faults = {"faults": [{"kind": "status", "status": 500, "count": 3}, {"kind": "hang"}]}
    r = httpx.post(f"{admin}/_fake/faults", json=faults)
    assert r.status_code == 200 and r.json()["faults"][0]["count"] == 3
    assert http.get("/models").status_code == 200  # admin faults hit only model requests
    assert http.post("/chat/completions", json=chat()).status_code == 500
    assert httpx.get(f"{admin}/_fake/faults").json()["faults"][0]["count"] == 2
    assert httpx.delete(f"{admin}/_fake/faults").json() == {"faults": []}
    assert http.post("/chat/completions", json=chat()).status_code == 200
    for bad in ({"faults": [{"kind": "explode"}]}, {"faults": [{"kind": "cut", "ms": "x"}]}, {}):
        r = httpx.post(f"{admin}/_fake/faults", json=bad)
        assert r.status_code == 400 and r.json()["error"]["param"] == "faults"
    fake.set_faults({"kind": "status"})
    assert httpx.post(f"{admin}/_fake/reset").status_code == 200
    assert fake.stats["requests"] == {} and fake.stats["faults_pending"] == []


def test_hang_until_client_gives_up(fake: FakeUpstreamHandle, http: httpx.Client) -> None:
    fake.set_faults({"kind": "hang"})
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        http.post("/chat/completions", json=chat(), timeout=0.3)
    assert time.monotonic() - started >= 0.29
    wait_until(lambda: fake.stats["disconnects"] == 1)


def test_reset_is_a_tcp_reset(fake: FakeUpstreamHandle, sdk: openai.OpenAI) -> None:
    fake.set_faults({"kind": "reset"})
    with socket.create_connection(("127.0.0.1", fake.port)) as sock:
        payload = orjson.dumps(chat())
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s"
            % (len(payload), payload)
        )
        with pytest.raises(ConnectionResetError):
            sock.recv(1024)
    with pytest.raises(openai.APIConnectionError):
        sdk.chat.completions.create(
            model="m-small", messages=[{"role": "user", "content": "x [[fault:reset]]"}]
        )


def test_cut_stream_is_incomplete(fake: FakeUpstreamHandle, http: httpx.Client) -> None:
    fake.set_faults({"kind": "cut", "after_chunks": 3})
    received: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        http.stream("POST", "/chat/completions", json=chat(stream=True)) as r,
    ):
        for line in r.iter_lines():
            if line:
                received.append(line)
    assert len(received) == 3 and "[DONE]" not in "".join(received)
    fake.set_faults({"kind": "cut"})
    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/chat/completions", json=chat())
    assert fake.stats["disconnects"] == 0


def test_markers_through_the_sdk(fake: FakeUpstreamHandle, sdk: openai.OpenAI) -> None:
    def ask(marker: str, **extra: Any) -> Any:
        messages: Any = [
            {"role": "user", "content": "an earlier turn [[fault:reset]]"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": f"please {marker}"},
        ]
        return sdk.chat.completions.create(model="m-small", messages=messages, **extra)

    with pytest.raises(openai.InternalServerError) as info:
        ask("[[fault:status=503]]")
    assert info.value.status_code == 503
    with pytest.raises(openai.RateLimitError) as rate:
        ask("[[fault:status=429,retry_after=3]]")
    assert rate.value.response.headers["retry-after"] == "3"
    stream = ask("[[fault:cut=3]]", stream=True)
    got = []
    with pytest.raises(openai.APIError):
        got.extend(stream)
    assert len(got) == 3
    with pytest.raises(openai.APITimeoutError):
        ask("[[fault:hang]]", timeout=0.2)
    with pytest.raises(openai.BadRequestError):
        ask("[[fault:explode]]")
    with pytest.raises(openai.InternalServerError):
        ask("[[fault:status]]")  # status defaults to 503
    assert ask("no marker in the last user message").choices[0].finish_reason == "stop"
    assert fake.stats["faults_injected"] == {"status": 3, "cut": 1, "hang": 1}


def test_marker_wins_over_queue(fake: FakeUpstreamHandle, http: httpx.Client) -> None:
    fake.set_faults({"kind": "status", "status": 502})
    assert http.post("/chat/completions", json=chat("[[fault:status=504]]")).status_code == 504
    assert http.post("/chat/completions", json=chat()).status_code == 502
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        http.post("/completions", json={"model": "m-small", "prompt": "[[fault:reset]]"})
    assert http.post("/completions", json={"model": "m-small", "prompt": "x"}).status_code == 200


def test_stall_and_slow_first_byte(fake: FakeUpstreamHandle, http: httpx.Client) -> None:
    fake.set_faults({"kind": "stall", "after_chunks": 2, "ms": 600})
    stamps: list[float] = []
    lines: list[str] = []
    started = time.monotonic()
    with http.stream("POST", "/chat/completions", json=chat(stream=True)) as r:
        for line in r.iter_lines():
            if line:
                stamps.append(time.monotonic() - started)
                lines.append(line)
    # two chunks, then the stall (bounds from the request start survive a busy machine)
    assert stamps[1] < 0.4 and stamps[2] >= 0.6
    assert lines[-1] == "data: [DONE]" and len(lines) == 16 + 3
    fake.set_faults({"kind": "stall", "after_chunks": 1, "ms": 2000})
    with (
        pytest.raises(httpx.ReadTimeout),
        http.stream("POST", "/chat/completions", json=chat(stream=True), timeout=0.3) as r,
    ):
        r.read()
    wait_until(lambda: fake.stats["disconnects"] == 1)
    fake.set_faults({"kind": "slow_first_byte", "ms": 250}, {"kind": "stall", "ms": 250})
    for _ in range(2):
        started = time.monotonic()
        assert http.post("/chat/completions", json=chat()).status_code == 200
        assert time.monotonic() - started >= 0.24


def test_stats_record_requests(fake: FakeUpstreamHandle, http: httpx.Client) -> None:
    body = chat(stream=True, stream_options={"include_usage": True}, vendor_field={"a": [1]})
    http.post("/chat/completions", json=body, headers={"authorization": "Bearer sk-up"})
    http.post("/chat/completions", content=b"{oops")
    http.get("/models")
    http.get("/../healthz")
    stats = fake.stats
    assert stats["requests"] == {"/v1/chat/completions": 2, "/v1/models": 1, "/healthz": 1}
    assert stats["requests_total"] == 4 and stats["disconnects"] == 0
    first, second, third = stats["recent"]
    assert first["body"] == body and first["headers"]["authorization"] == "Bearer sk-up"
    assert second["body"] is None and third["path"] == "/v1/models"
    admin = str(fake.base_url).removesuffix("/v1")
    assert httpx.get(f"{admin}/_fake/stats").json()["requests"] == stats["requests"]
    for i in range(60):
        http.post("/chat/completions", json=chat(str(i)))
    recent = fake.stats["recent"]
    assert len(recent) == 50 and recent[-1]["body"]["messages"][0]["content"] == "59"
    assert "authorization" not in recent[-1]["headers"]


def test_keep_alive_and_pipelining(fake: FakeUpstreamHandle) -> None:
    slow = orjson.dumps(chat("[[fault:slow_first_byte=100]]", stream=True))
    fast = orjson.dumps(chat("fast"))

    def post(payload: bytes, extra: bytes = b"") -> bytes:
        return (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n%scontent-length: %d\r\n\r\n%s"
            % (extra, len(payload), payload)
        )

    with socket.create_connection(("127.0.0.1", fake.port)) as sock:
        sock.sendall(post(slow) + post(fast) + post(fast, b"connection: close\r\n"))
        sock.settimeout(5)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 3
    stream_end = data.index(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    assert data.index(b"HTTP/1.1 200 OK", 1) > stream_end
    assert data.rstrip().endswith(b"}") and b"connection: close" in data
    with httpx.Client(base_url=fake.base_url, limits=httpx.Limits(max_connections=1)) as client:
        peers = set()
        for _ in range(5):
            r = client.post("/chat/completions", json=chat())
            peers.add(r.extensions["network_stream"].get_extra_info("client_addr"))
        assert len(peers) == 1
    with socket.create_connection(("127.0.0.1", fake.port)) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 400")


def test_concurrent_clients(fake: FakeUpstreamHandle) -> None:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=fake.base_url) as client:
            jobs = [client.post("/chat/completions", json=chat(f"q{i}")) for i in range(64)]
            return await asyncio.gather(*jobs)

    responses = asyncio.run(run())
    assert all(r.status_code == 200 for r in responses)
    assert len({r.json()["id"] for r in responses}) == 64
    assert all(
        r.json()["choices"][0]["message"]["content"].count(f"q{i}") for i, r in enumerate(responses)
    )


def test_latency_and_pacing() -> None:
    with serve_fake_upstream(latency_ms=80, tokens_per_s=50, reply_words=6) as fake:
        stamps: list[float] = []
        started = time.monotonic()
        with (
            httpx.Client(base_url=fake.base_url) as client,
            client.stream("POST", "/chat/completions", json=chat(stream=True)) as r,
        ):
            for line in r.iter_lines():
                if line:
                    stamps.append(time.monotonic() - started)
        assert stamps[0] >= 0.08
        assert stamps[-1] >= 0.08 + 6 / 50 - 0.005  # server-paced: 6 tokens at 50/s
        started = time.monotonic()
        out = httpx.post(f"{fake.base_url}/chat/completions", json=chat()).json()
        assert time.monotonic() - started >= 0.08 + 6 / 50 - 0.005
        assert out["usage"]["completion_tokens"] == 6


def test_disconnect_mid_stream_is_counted() -> None:
    with serve_fake_upstream(tokens_per_s=20) as fake:
        with (
            httpx.Client(base_url=fake.base_url) as client,
            client.stream("POST", "/chat/completions", json=chat(stream=True)) as r,
        ):
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
        wait_until(lambda: fake.stats["disconnects"] == 1)


def test_cli_subprocess() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "gateway.fake_upstream", "--port", str(port), "--models", "a,b"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        assert httpx.post(f"{base}/v1/chat/completions", json={**chat(), "model": "b"}).is_success
        assert (
            httpx.post(f"{base}/v1/chat/completions", json={**chat(), "model": "c"}).status_code
            == 404
        )
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert f"listening on http://127.0.0.1:{port}/v1" in out


def test_serve_on_a_running_loop() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def run() -> dict[str, Any]:
        task = asyncio.create_task(FakeUpstream(FakeConfig(reply_words=3)).serve(port=port))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1") as client:
            for _ in range(200):
                try:
                    reply = await client.post("/chat/completions", json=chat())
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return dict(reply.json())

    assert asyncio.run(run())["choices"][0]["message"]["content"] == "m-small says: hello"


def test_slow_reader_gets_everything() -> None:
    with serve_fake_upstream(reply_words=20000) as fake:
        body = chat(stream=True, stream_options={"include_usage": True})
        with (
            httpx.Client(base_url=fake.base_url) as client,
            client.stream("POST", "/chat/completions", json=body) as r,
        ):
            time.sleep(0.3)  # the server's write buffer fills and it must wait (pause_writing)
            events = sse_events(r.read().decode())
        usage = json.loads(events[-2])["usage"]
        assert usage["completion_tokens"] == 20000 == len(events) - 4
        assert fake.stats["disconnects"] == 0


def test_client_leaving_during_latency_or_json_stall() -> None:
    with serve_fake_upstream(latency_ms=2000) as fake, httpx.Client(timeout=0.1) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post(f"{fake.base_url}/chat/completions", json=chat())
        with pytest.raises(httpx.ReadTimeout):
            client.post(f"{fake.base_url}/chat/completions", json=chat(stream=True))
        with pytest.raises(httpx.ReadTimeout):
            client.post(f"{fake.base_url}/chat/completions", json=chat("[[fault:status=500]]"))
        wait_until(lambda: fake.stats["disconnects"] == 3)
    with serve_fake_upstream() as fake, httpx.Client(timeout=0.1) as client:
        fake.set_faults({"kind": "stall", "ms": 2000})
        with pytest.raises(httpx.ReadTimeout):
            client.post(f"{fake.base_url}/chat/completions", json=chat())
        wait_until(lambda: fake.stats["disconnects"] == 1)


def test_expect_continue(fake: FakeUpstreamHandle) -> None:
    payload = orjson.dumps(chat())
    with socket.create_connection(("127.0.0.1", fake.port)) as sock:
        sock.settimeout(5)
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(payload)
        )
        assert sock.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(payload)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK")


def test_completions_and_embeddings_validation(http: httpx.Client) -> None:
    ids = http.post("/completions", json={"model": "m-small", "prompt": [[5, 6], [7]], "n": 2})
    assert ids.json()["usage"]["prompt_tokens"] == 3 and len(ids.json()["choices"]) == 4
    bad_bodies: list[tuple[str, dict[str, Any], str]] = [
        ("/completions", {"prompt": [{"x": 1}]}, "prompt"),
        ("/completions", {"prompt": "[[fault:nope]]"}, "prompt"),
        ("/embeddings", {"input": "x", "dimensions": 0}, "dimensions"),
        ("/embeddings", {"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ("/embeddings", {"input": []}, "input"),
    ]
    for path, extra, param in bad_bodies:
        r = http.post(path, json={"model": "m-small", **extra})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, extra


def test_port_in_use_is_reported(fake: FakeUpstreamHandle) -> None:
    with pytest.raises(OSError):
        serve_fake_upstream(port=fake.port)
