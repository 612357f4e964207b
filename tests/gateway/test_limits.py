"""The policy's input limits on /v1/chat/completions and /v1/route/explain: OpenAI-shaped 400s
before anything is routed or forwarded, and ``check_limits`` itself (what tenants reuse)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import ArrayTooLong, ContextLengthExceeded, IntegerTooLarge, TooDeep
from gateway.pipeline import check_limits
from policies.compiled import NO_LIMITS, Limits
from tests.fakes.servers import FakeUpstreamHandle
from tests.gateway.conftest import GatewayFactory, PolicyFactory, chat

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def body(*contents: Any, **extra: Any) -> dict[str, Any]:
    return {
        "model": "auto",
        "messages": [{"role": "user", "content": c} for c in contents],
        **extra,
    }


def test_under_every_cap_nothing_is_raised() -> None:
    check_limits(Limits(2, 10, 100), body("hello", "world", max_tokens=100))
    check_limits(NO_LIMITS, body(*["x" * 1000] * 50, max_tokens=10**6))


def test_too_many_messages() -> None:
    with pytest.raises(ArrayTooLong) as info:
        check_limits(Limits(max_messages=2), body("a", "b", "c"))
    assert info.value.param == "messages" and info.value.code == "array_above_max_length"
    assert "maximum length 2, but got an array with length 3" in info.value.message


@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_above_the_cap(name: str) -> None:
    check_limits(Limits(max_tokens=100), body("a", **{name: 100}))
    with pytest.raises(IntegerTooLarge) as info:
        check_limits(Limits(max_tokens=100), body("a", **{name: 101}))
    assert info.value.param == name and info.value.code == "integer_above_max_value"


@pytest.mark.parametrize("value", ["101", 101.0, "1_000"])
def test_max_tokens_that_validation_coerced_are_compared_as_ints(value: Any) -> None:
    """ChatCompletionRequest takes "101" and 101.0 as 101; the raw body still holds them
    (a str compared to the cap was a TypeError, a 500)."""
    check_limits(Limits(max_tokens=10**6), body("a", max_tokens=value))
    with pytest.raises(IntegerTooLarge):
        check_limits(Limits(max_tokens=100), body("a", max_tokens=value))


def test_tools_nested_past_what_orjson_writes_are_a_400() -> None:
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    tools = [{"type": "function", "function": {"name": "f", "parameters": deep}}]
    with pytest.raises(TooDeep) as info:
        check_limits(Limits(max_chars=10**6), body("hi", tools=tools))
    assert info.value.status == 400 and info.value.param == "tools"


@pytest.mark.parametrize(
    ("request_body", "chars"),
    [
        (body("abcde", "fghij"), 10),
        # text parts count, images do not
        (
            body(
                [
                    {"type": "text", "text": "abcde"},
                    {"type": "image_url", "image_url": {"url": "data:" + "A" * 500}},
                ]
            ),
            5,
        ),
        (
            {
                "model": "auto",
                "messages": [
                    {"role": "user", "content": "abc"},
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "1",
                                "type": "function",
                                "function": {"name": "f", "arguments": '{"x":1}'},
                            }
                        ],
                    },
                ],
            },
            3 + 7,
        ),  # fmt: skip
    ],
)
def test_characters_are_counted_across_contents_parts_and_tool_calls(
    request_body: dict[str, Any], chars: int
) -> None:
    check_limits(Limits(max_chars=chars), request_body)
    with pytest.raises(ContextLengthExceeded) as info:
        check_limits(Limits(max_chars=chars - 1), request_body)
    assert info.value.param == "messages" and info.value.code == "context_length_exceeded"


def test_tool_definitions_count_as_their_json() -> None:
    import orjson

    size = len(orjson.dumps([TOOL]))
    check_limits(Limits(max_chars=2 + size), body("hi", tools=[TOOL]))
    with pytest.raises(ContextLengthExceeded):
        check_limits(Limits(max_chars=1 + size), body("hi", tools=[TOOL]))


def test_a_tenants_stricter_limits_go_over_the_routes() -> None:
    route, tenant = Limits(max_tokens=4096), Limits(max_tokens=256)
    check_limits(route, body("a", max_tokens=1000))
    with pytest.raises(IntegerTooLarge):
        check_limits(route.tighter(tenant), body("a", max_tokens=1000))


@pytest.fixture
def limited(policy: PolicyFactory) -> dict[str, Any]:
    data = policy(
        routes=[
            {"name": "auto", "candidates": ["small", "big"], "limits": {"max_tokens": 50}},
            {"name": "wide", "candidates": ["small"]},
        ]
    )
    data["limits"] = {"max_messages": 3, "max_chars": 100, "max_tokens": 500}
    return data


def test_the_gateway_answers_400_before_routing_and_records_it(
    make_gateway: GatewayFactory, small: FakeUpstreamHandle, limited: dict[str, Any]
) -> None:
    gw = make_gateway(limited)
    with gw.http() as c:
        ok = c.post("/v1/chat/completions", json=chat("short", max_tokens=50))
        assert ok.status_code == 200, ok.text
        cases = [
            (chat("x" * 101), "messages", "context_length_exceeded"),
            (body("a", "b", "c", "d"), "messages", "array_above_max_length"),
            (chat("hi", max_tokens=51), "max_tokens", "integer_above_max_value"),
        ]
        for request_body, param, code in cases:
            r = c.post("/v1/chat/completions", json=request_body)
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert (err["type"], err["param"], err["code"]) == (
                "invalid_request_error",
                param,
                code,
            )
        # the route named by the header sets the limits: wide inherits the default 500
        r = c.post("/v1/chat/completions", json=chat("hi", max_tokens=51),
                   headers={"x-effgate-route": "wide"})  # fmt: skip
        assert r.status_code == 200, r.text
        r = c.post("/v1/chat/completions", json=chat("hi", model="small", max_tokens=501))
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
        explain = c.post("/v1/route/explain", json=chat("x" * 101))
        assert explain.status_code == 400
        assert explain.json()["error"]["code"] == "context_length_exceeded"
    assert small.stats["requests"]["/v1/chat/completions"] == 2  # the two allowed ones only
    records = [r for r in gw.records(at_least=7) if r.get("status") == 400]
    assert len(records) == 5 and {r["outcome"] for r in records} == {"client_error"}
