"""The OpenAI contract: the official ``openai`` SDK (sync and async) against the gateway.

The gateway runs under uvicorn on loopback in front of two fake upstreams (``mock-small``
behind catalog model ``small``, ``mock-big`` behind ``big``). What the fakes received is read
back from their stats, so pass-through claims are checked on the wire.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.fakes.servers import FakeUpstreamHandle
from tests.gateway.conftest import (
    Gateway,
    GatewayFactory,
    PolicyFactory,
    clear_of_minute_boundary,
    closed_port,
    sse_data,
)

USER: Any = [{"role": "user", "content": "hello there world"}]
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}


def small_cost(prompt: int, completion: int) -> float:
    return (prompt * 0.15 + completion * 0.60) / 1e6


def last_body(fake: FakeUpstreamHandle) -> dict[str, Any]:
    recent = fake.stats["recent"]
    assert recent, "the upstream saw no request"
    body: dict[str, Any] = recent[-1]["body"]
    return body


# -- JSON ------------------------------------------------------------------------------------


def test_sync_json(gateway: Gateway, small: FakeUpstreamHandle) -> None:
    client = gateway.sdk()
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=USER)
    out = raw.parse()
    assert out.model == "small"  # the catalog id, not mock-small
    assert out.object == "chat.completion"
    content = out.choices[0].message.content
    assert content is not None and content.startswith("mock-small says: hello there world")
    assert out.usage is not None
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (3, 16)
    assert raw.headers["x-effgate-model"] == "small"
    assert raw.headers["x-effgate-route"] == "auto"
    assert float(raw.headers["x-effgate-cost-usd"]) == pytest.approx(small_cost(3, 16))
    assert raw.headers["x-effgate-request-id"].startswith("req_")
    assert small.stats["requests"]["/v1/chat/completions"] == 1


@pytest.mark.anyio
async def test_async_json_routed(gateway: Gateway, big: FakeUpstreamHandle) -> None:
    # difficulty 0: P(small) = 0.70 < bar 0.8 <= P(big) = 0.97, so the bar route picks big
    async with gateway.async_sdk() as client:
        raw = await client.chat.completions.with_raw_response.create(model="routed", messages=USER)
    out = raw.parse()
    assert out.model == "big"
    assert out.choices[0].message.content is not None
    assert out.choices[0].message.content.startswith("mock-big says:")
    assert raw.headers["x-effgate-route"] == "routed"
    assert float(raw.headers["x-effgate-quality"]) == pytest.approx(0.9677, abs=1e-4)
    assert gateway.estimator.calls == 1
    assert last_body(big)["model"] == "mock-big"


def test_explicit_catalog_model_skips_the_estimator(
    gateway: Gateway, big: FakeUpstreamHandle
) -> None:
    out = gateway.sdk().chat.completions.create(model="big", messages=USER)
    assert out.model == "big"
    assert gateway.estimator.calls == 0
    assert big.stats["requests"]["/v1/chat/completions"] == 1


# -- streaming -------------------------------------------------------------------------------


def test_sync_stream_without_usage(gateway: Gateway, small: FakeUpstreamHandle) -> None:
    client = gateway.sdk()
    whole = client.chat.completions.create(model="small", messages=USER)
    chunks = list(client.chat.completions.create(model="small", messages=USER, stream=True))
    assert chunks, "no chunks"
    assert {c.model for c in chunks} == {"small"}
    assert all(c.usage is None for c in chunks), "usage was not asked for"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "stop"
    # the gateway asked the upstream for usage anyway, to account for the request
    sent = last_body(small)
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


def test_sync_stream_with_usage(gateway: Gateway, small: FakeUpstreamHandle) -> None:
    client = gateway.sdk()
    chunks = list(
        client.chat.completions.create(
            model="auto", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert usage_chunks == [chunks[-1]], "exactly one usage chunk, last"
    last = chunks[-1]
    assert last.choices == [] and last.model == "small"
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (3, 16)
    extra = last.usage.model_extra or {}
    assert extra["effgate_cost_usd"] == pytest.approx(small_cost(3, 16))
    assert {c.model for c in chunks} == {"small"}


@pytest.mark.anyio
async def test_async_stream_with_and_without_usage(
    gateway: Gateway, small: FakeUpstreamHandle
) -> None:
    async with gateway.async_sdk() as client:
        with_usage = [
            c
            async for c in await client.chat.completions.create(
                model="small",
                messages=USER,
                stream=True,
                stream_options={"include_usage": True},
            )
        ]
        without = [
            c
            async for c in await client.chat.completions.create(
                model="small", messages=USER, stream=True
            )
        ]
    assert with_usage[-1].usage is not None
    assert (with_usage[-1].usage.model_extra or {})["effgate_cost_usd"] > 0
    assert all(c.usage is None for c in without)
    assert len(with_usage) == len(without) + 1
    assert {c.model for c in with_usage + without} == {"small"}


def test_stream_wire_format_is_sse_ending_in_done(
    gateway: Gateway, small: FakeUpstreamHandle
) -> None:
    with gateway.http() as c:
        r = c.post("/v1/chat/completions", json={"model": "auto", "messages": USER, "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    data = sse_data(r.content)
    assert data[-1] == b"[DONE]"
    for d in data[:-1]:
        obj = orjson.loads(d)
        assert obj["object"] == "chat.completion.chunk" and obj["model"] == "small"
        assert obj.get("usage") is None


# -- tools, response_format, n ---------------------------------------------------------------


def test_tool_calling_round_trip(gateway: Gateway, small: FakeUpstreamHandle) -> None:
    client = gateway.sdk()
    messages: Any = [{"role": "user", "content": "weather in Paris for 2 days?"}]
    first = client.chat.completions.create(model="auto", messages=messages, tools=[WEATHER])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.type == "function"
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert set(args) == {"city", "days"}
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny and 21 C"},
    ]
    final = client.chat.completions.create(model="auto", messages=messages, tools=[WEATHER])
    assert final.choices[0].finish_reason == "stop"
    content = final.choices[0].message.content
    assert content is not None and "the tool returned sunny and 21 C" in content
    sent = last_body(small)
    assert sent["messages"][1]["tool_calls"][0]["id"] == call.id
    assert sent["messages"][2] == messages[2]
    assert sent["tools"] == [WEATHER]


def test_tool_call_streamed(gateway: Gateway, small: FakeUpstreamHandle) -> None:
    chunks = list(
        gateway.sdk().chat.completions.create(
            model="auto", messages=USER, tools=[WEATHER], stream=True
        )
    )
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert calls[0].function is not None and calls[0].function.name == "get_weather"
    args = "".join(tc.function.arguments or "" for tc in calls if tc.function is not None)
    assert set(json.loads(args)) == {"city", "days"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_response_format_json_object_and_schema(gateway: Gateway) -> None:
    client = gateway.sdk()
    obj = client.chat.completions.create(
        model="auto", messages=USER, response_format={"type": "json_object"}
    )
    assert "answer" in json.loads(obj.choices[0].message.content or "")
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    out = client.chat.completions.create(
        model="routed",
        messages=USER,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema, "strict": True},
        },
    )
    parsed = json.loads(out.choices[0].message.content or "")
    assert set(parsed) == {"name", "age"} and isinstance(parsed["age"], int)


def test_n_choices_pass_through(gateway: Gateway, small: FakeUpstreamHandle) -> None:
    client = gateway.sdk()
    out = client.chat.completions.create(model="auto", messages=USER, n=3)
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert len({c.message.content for c in out.choices}) == 3
    assert last_body(small)["n"] == 3
    chunks = list(client.chat.completions.create(model="auto", messages=USER, n=2, stream=True))
    assert {c.choices[0].index for c in chunks if c.choices} == {0, 1}


# -- what reaches the upstream ---------------------------------------------------------------


def test_unknown_fields_pass_through_unchanged(gateway: Gateway, small: FakeUpstreamHandle) -> None:
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": "hi", "x_part_meta": {"k": [1, 2]}}],
        "temperature": 0.3,
        "logit_bias": {"42": -1},
        "vendor_extension": {"nested": {"deep": True}, "list": [1, "two", None]},
        "seed": 7,
    }
    with gateway.http() as c:
        assert c.post("/v1/chat/completions", json=body).status_code == 200
    assert last_body(small) == {**body, "model": "mock-small"}  # nothing added, nothing lost


def test_stream_forwarding_injects_only_include_usage(
    gateway: Gateway, small: FakeUpstreamHandle
) -> None:
    body = {
        "model": "small",
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": False, "vendor_flag": 1},
        "top_p": 0.5,
    }
    with gateway.http() as c:
        r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    assert not any(b'"usage":{' in d for d in sse_data(r.content)), "usage not asked for"
    expected = {**body, "model": "mock-small"}
    expected["stream_options"] = {"include_usage": True, "vendor_flag": 1}
    assert last_body(small) == expected


def test_sdk_request_reaches_upstream_without_defaults(
    gateway: Gateway, big: FakeUpstreamHandle
) -> None:
    gateway.sdk().chat.completions.create(
        model="big", messages=USER, extra_body={"guided_choice": ["a", "b"]}
    )
    assert last_body(big) == {"model": "mock-big", "messages": USER, "guided_choice": ["a", "b"]}


def test_upstream_key_sent_only_when_its_variable_is_set(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EFFGATE_TEST_SMALL_KEY", "sk-upstream-small")
    monkeypatch.delenv("EFFGATE_TEST_BIG_KEY", raising=False)
    gw = make_gateway(
        policy(
            small={"api_key_env": "EFFGATE_TEST_SMALL_KEY"},
            big={"api_key_env": "EFFGATE_TEST_BIG_KEY"},
        ),
        api_keys={"sk-client": "team-a"},
    )
    client = gw.sdk(api_key="sk-client")
    client.chat.completions.create(model="small", messages=USER)
    client.chat.completions.create(model="big", messages=USER)
    small_headers = small.stats["recent"][-1]["headers"]
    big_headers = big.stats["recent"][-1]["headers"]
    assert small_headers["authorization"] == "Bearer sk-upstream-small"
    assert "authorization" not in big_headers
    # the client's own gateway key never travels upstream
    assert not any("sk-client" in v for v in big_headers.values())
    assert not any("sk-client" in v for v in small_headers.values())


# -- the SDK's exception types ---------------------------------------------------------------


def assert_error_shape(body: Any, status: int) -> dict[str, Any]:
    assert set(body) == {"error"}, body
    err: dict[str, Any] = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    assert "Traceback" not in err["message"]
    assert isinstance(err["type"], str)
    assert err["param"] is None or isinstance(err["param"], str)
    assert err["code"] is None or isinstance(err["code"], str)
    assert 400 <= status < 600
    return err


def test_400_malformed_json(gateway: Gateway) -> None:
    with gateway.http() as c:
        r = c.post(
            "/v1/chat/completions",
            content=b'{"model": "auto", "messages": [',
            headers={"content-type": "application/json"},
        )
    assert r.status_code == 400
    err = assert_error_shape(r.json(), 400)
    assert err["type"] == "invalid_request_error"


def test_400_invalid_field(gateway: Gateway, small: FakeUpstreamHandle) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        gateway.sdk().chat.completions.create(model="auto", messages=[])
    assert info.value.status_code == 400
    assert info.value.param == "messages"
    assert info.value.type == "invalid_request_error"
    assert_error_shape(info.value.response.json(), 400)
    assert small.stats["requests_total"] == 0


def test_401_wrong_key(make_gateway: GatewayFactory, small: FakeUpstreamHandle) -> None:
    gw = make_gateway(api_keys={"sk-right": "team-a"})
    with pytest.raises(openai.AuthenticationError) as info:
        gw.sdk(api_key="sk-wrong").chat.completions.create(model="auto", messages=USER)
    assert info.value.status_code == 401
    assert_error_shape(info.value.response.json(), 401)
    assert small.stats["requests_total"] == 0
    ok = gw.sdk(api_key="sk-right").chat.completions.create(model="auto", messages=USER)
    assert ok.model == "small"


def test_404_unknown_model(gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        gateway.sdk().chat.completions.create(model="gpt-nonexistent", messages=USER)
    assert info.value.code == "model_not_found"
    assert info.value.param == "model"
    assert_error_shape(info.value.response.json(), 404)


def test_413_body_too_large(make_gateway: GatewayFactory, small: FakeUpstreamHandle) -> None:
    gw = make_gateway(max_body_bytes=4096)
    with pytest.raises(openai.APIStatusError) as info:
        gw.sdk().chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "x" * 5000}]
        )
    assert info.value.status_code == 413
    err = assert_error_shape(info.value.response.json(), 413)
    assert err["code"] == "request_too_large"
    assert small.stats["requests_total"] == 0


def test_429_upstream_on_every_candidate(
    gateway: Gateway, small: FakeUpstreamHandle, big: FakeUpstreamHandle
) -> None:
    messages: Any = [{"role": "user", "content": "[[fault:status=429,retry_after=0]] hi"}]
    with pytest.raises(openai.RateLimitError) as info:
        gateway.sdk().chat.completions.create(model="auto", messages=messages)
    assert info.value.status_code == 429
    assert_error_shape(info.value.response.json(), 429)
    # max_retries 1 on each model: two attempts on small, then two on big
    assert small.stats["requests"]["/v1/chat/completions"] == 2
    assert big.stats["requests"]["/v1/chat/completions"] == 2
    assert info.value.response.headers["x-effgate-model"] == "big"
    assert info.value.response.headers["retry-after"] == "0", "the upstream's, passed on"


def test_429_own_rate_limit(make_gateway: GatewayFactory, small: FakeUpstreamHandle) -> None:
    gw = make_gateway(rate_limit_rpm=2)
    client = gw.sdk()
    clear_of_minute_boundary()
    for _ in range(2):
        client.chat.completions.create(model="auto", messages=USER)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="auto", messages=USER)
    err = assert_error_shape(info.value.response.json(), 429)
    assert err["code"] == "rate_limit_exceeded"
    assert 1 <= int(info.value.response.headers["retry-after"]) <= 60
    assert small.stats["requests"]["/v1/chat/completions"] == 2


def test_502_unreachable_upstream(make_gateway: GatewayFactory, policy: PolicyFactory) -> None:
    port = closed_port()
    gw = make_gateway(
        policy(small_url=f"http://127.0.0.1:{port}/v1", big_url=f"http://127.0.0.1:{port}/v1")
    )
    with pytest.raises(openai.InternalServerError) as info:
        gw.sdk().chat.completions.create(model="auto", messages=USER)
    assert info.value.status_code == 502
    err = assert_error_shape(info.value.response.json(), 502)
    assert err["code"] == "upstream_unavailable"
    assert str(port) not in err["message"], "the upstream URL must not leak"


def test_503_all_circuits_open(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
) -> None:
    gw = make_gateway(policy(small={"max_retries": 0}, big={"max_retries": 0}), circuit_failures=1)
    client = gw.sdk()
    bad: Any = [{"role": "user", "content": "[[fault:status=500]]"}]
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="auto", messages=bad)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="auto", messages=USER)
    assert info.value.status_code == 503
    err = assert_error_shape(info.value.response.json(), 503)
    assert err["code"] == "no_healthy_upstream"
    assert small.stats["requests"]["/v1/chat/completions"] == 1
    assert big.stats["requests"]["/v1/chat/completions"] == 1


def test_504_hang_past_total(
    make_gateway: GatewayFactory, policy: PolicyFactory, small: FakeUpstreamHandle
) -> None:
    timeouts = {"connect_s": 1.0, "first_byte_s": 0.3, "idle_s": 0.3, "total_s": 0.3}
    gw = make_gateway(policy(small={"timeouts": timeouts}))
    with pytest.raises(openai.APIStatusError) as info:
        gw.sdk().chat.completions.create(
            model="small", messages=[{"role": "user", "content": "[[fault:hang]]"}]
        )
    assert info.value.status_code == 504
    err = assert_error_shape(info.value.response.json(), 504)
    assert err["code"] == "upstream_timeout"


def test_sdk_raises_on_a_cut_stream(gateway: Gateway) -> None:
    stream = gateway.sdk().chat.completions.create(
        model="small", messages=[{"role": "user", "content": "[[fault:cut=4]] hi"}], stream=True
    )
    seen = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            seen.append(chunk)
    assert len(seen) == 4
    assert "upstream" in info.value.message


def test_errors_through_raw_http_are_never_tracebacks(gateway: Gateway) -> None:
    with gateway.http() as c:
        for body in (b"[]", b'"x"', b"{}", b'{"model": 5, "messages": "x"}', b"\xff\xfe"):
            r = c.post("/v1/chat/completions", content=body)
            assert r.status_code == 400, body
            assert_error_shape(r.json(), 400)
        r = c.post("/v1/chat/completions", json={"model": "auto", "messages": [{"role": "x"}]})
        err = assert_error_shape(r.json(), 400)
        assert err["param"] is not None and err["param"].startswith("messages.0")


def test_unknown_path_and_method_are_openai_shaped(gateway: Gateway) -> None:
    with httpx.Client(base_url=gateway.base_url) as c:
        missing = c.post("/v1/responses", json={"model": "auto", "input": "hi"})
        wrong_method = c.get("/v1/chat/completions")
    assert missing.status_code == 404
    assert_error_shape(missing.json(), 404)
    assert wrong_method.status_code == 405
    assert_error_shape(wrong_method.json(), 405)
