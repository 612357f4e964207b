"""Fuzzing a live ``effgate serve`` process on loopback with requests (the session's fake
upstreams behind it; the process and the checks are in ``tests/gateway/fuzzing.py``).

    schemathesis   the gateway's own /openapi.json: generated valid and invalid requests for
                   every operation; no 5xx, and responses as documented
    hypothesis     hostile raw bodies over real HTTP: deep nesting, huge strings, wrong types
                   in every field, invalid UTF-8, NaN and Infinity, odd content parts
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.gateway import fuzzing
from tests.gateway.fuzzing import (
    AUTH,
    CHAT,
    CLIENT_KEY,
    EMB,
    EXPLAIN,
    FEEDBACK,
    FUZZ,
    PROVIDER_KEY,
    SCHEMA_EXAMPLES,
    chat_body,
    check,
    post,
)
from tests.gateway.serving import ServeProcess

pytestmark = pytest.mark.integration

# The module-scoped fixtures: one gateway process (and one client) for this module.
live = fuzzing.live
client = fuzzing.client


# -- schemathesis: the documented API -----------------------------------------------------


@pytest.fixture(scope="module")
def api_schema(live: ServeProcess) -> Any:
    return schemathesis.openapi.from_url(live.origin + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=SCHEMA_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_documented_api_never_fails(case: Any) -> None:
    response = case.call_and_validate(
        headers=AUTH,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
        timeout=30,
    )
    for secret in (CLIENT_KEY, PROVIDER_KEY):
        assert secret not in response.text
    assert "Traceback" not in response.text


# -- hypothesis: hostile bodies ----------------------------------------------------------

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
CHAT_FIELDS = (
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "tools",
    "tool_choice",
    "response_format",
    "metadata",
    "user",
    "temperature",
)
odd_part = st.one_of(
    st.none(),
    json_value,
    st.fixed_dictionaries({"type": json_value}),
    st.fixed_dictionaries({"type": st.just("text"), "text": json_value}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": json_value}),
    st.fixed_dictionaries(
        {"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": json_value})}
    ),
    st.fixed_dictionaries({"type": st.just("input_audio"), "input_audio": json_value}),
    st.fixed_dictionaries({"type": st.text(max_size=20)}),
)
odd_message = st.one_of(
    json_value,
    st.fixed_dictionaries({"role": json_value, "content": json_value}),
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "system", "assistant", "tool", "developer"]),
            "content": st.lists(odd_part, max_size=4) | json_value,
        }
    ),
    st.fixed_dictionaries(
        {"role": st.just("assistant"), "tool_calls": json_value, "content": st.none()}
    ),
)


@st.composite
def hostile_chat(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = chat_body()
    for name in draw(st.lists(st.sampled_from(CHAT_FIELDS), min_size=1, max_size=4, unique=True)):
        body[name] = draw(json_value)
    if draw(st.booleans()):
        body["messages"] = draw(st.lists(odd_message, max_size=4))
    return body


@FUZZ
@given(body=hostile_chat())
def test_wrong_types_in_every_chat_field(client: httpx.Client, body: dict[str, Any]) -> None:
    for path in (CHAT, EXPLAIN):
        post(client, path, orjson.dumps(body))


@FUZZ
@given(body=st.dictionaries(st.sampled_from(["model", "input", "user", "x"]), json_value))
def test_wrong_types_in_embeddings(client: httpx.Client, body: dict[str, Any]) -> None:
    post(client, EMB, orjson.dumps({"model": "small", **body}))


@FUZZ
@given(body=json_value)
def test_any_json_on_every_endpoint(client: httpx.Client, body: Any) -> None:
    raw = orjson.dumps(body)
    for path in (CHAT, EMB, EXPLAIN, FEEDBACK):
        post(client, path, raw)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes(client: httpx.Client, raw: bytes) -> None:
    post(client, CHAT, raw)
    post(client, CHAT, b'{"model":"auto","messages":[{"role":"user","content":"' + raw + b'"}]}')


def nested(depth: int, leaf: bytes = b"1") -> bytes:
    return b"[" * depth + leaf + b"]" * depth


def nested_objects(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


DEEP = [10, 200, 253, 254, 255, 256, 300, 1000, 1023, 1024, 1025, 10_000]


def test_deep_nesting(client: httpx.Client) -> None:
    for depth in DEEP:
        deep_in_every_field(client, depth)


def deep_in_every_field(client: httpx.Client, depth: int) -> None:
    post(client, CHAT, nested(depth))
    deep = nested(depth).decode()
    for field in ("metadata", "tools", "tool_choice", "response_format", "user", "max_tokens"):
        value = f'{{"a":{deep}}}' if field in ("metadata", "response_format") else deep
        if field == "tools":
            value = f'[{{"type":"function","function":{{"name":"f","parameters":{deep}}}}}]'
        body = f'{{"model":"auto","messages":[{{"role":"user","content":"hi"}}],"{field}":{value}}}'
        post(client, CHAT, body.encode())
        post(client, EXPLAIN, body.encode())
    content = f'[{{"type":"text","text":"hi","extra":{deep}}}]'
    body = f'{{"model":"auto","messages":[{{"role":"user","content":{content}}}]}}'
    post(client, CHAT, body.encode())
    post(client, EMB, f'{{"model":"small","input":"x","extra":{deep}}}'.encode())
    post(client, CHAT, nested_objects(depth))


def test_huge_strings(client: httpx.Client) -> None:
    for size in (10_000, 1_000_000, 3_900_000, 5_000_000):
        huge_in_every_field(client, size)


def huge_in_every_field(client: httpx.Client, size: int) -> None:
    big = "x" * size
    post(client, CHAT, orjson.dumps(chat_body(user=big)))
    post(
        client, CHAT, orjson.dumps({"model": big, "messages": [{"role": "user", "content": "hi"}]})
    )
    post(client, EXPLAIN, orjson.dumps(chat_body(messages=[{"role": "user", "content": big}])))
    post(client, EMB, orjson.dumps({"model": "small", "input": big}))
    post(client, FEEDBACK, orjson.dumps({"request_id": big, "accepted": True}))
    if size < 1_000_000:
        r = client.get("/v1/models/" + big, headers=AUTH)
        check(r)


INVALID_TEXT = [
    b'"\xff\xfe"',
    b'"\xc3\x28"',
    b'"\xed\xa0\x80"',  # a UTF-8 encoded surrogate
    b'"\\ud800"',
    b'"\\udc00\\ud800"',
    b'"\\u0000"',
    b'"\x00"',
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e999",
    b"-1e999",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"1e-999",
    b"0.1e1",
    b"[]",
    b"{}",
    b"true",
]


def test_odd_scalars_in_every_field(client: httpx.Client) -> None:
    for value in INVALID_TEXT:
        odd_scalar_in_every_field(client, value)


def odd_scalar_in_every_field(client: httpx.Client, value: bytes) -> None:
    for field in (*CHAT_FIELDS, "content", "role"):
        body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
        raw = orjson.dumps(body)
        if field == "content":
            raw = raw.replace(b'"content":"hi"', b'"content":' + value)
        elif field == "role":
            raw = raw.replace(b'"role":"user"', b'"role":' + value)
        elif field in ("model", "messages"):
            raw = raw.replace(
                b'"' + field.encode() + b'":', b'"' + field.encode() + b'":' + value + b',"_":', 1
            )
        else:
            raw = raw[:-1] + b',"' + field.encode() + b'":' + value + b"}"
        post(client, CHAT, raw)
    post(client, EMB, b'{"model":"small","input":' + value + b"}")
    post(client, FEEDBACK, b'{"request_id":"req_x","score":' + value + b"}")
    post(client, FEEDBACK, b'{"request_id":' + value + b',"accepted":true}')


ODD_PARTS: list[Any] = [
    None,
    [],
    [None],
    [{}],
    [{"type": None}],
    [{"type": 5}],
    [{"type": "no_such_part", "data": "x"}],
    [{"type": "text"}],
    [{"type": "text", "text": None}],
    [{"type": "text", "text": ["a"]}],
    [{"type": "text", "text": {"nested": "x"}}],
    [{"type": "image_url"}],
    [{"type": "image_url", "image_url": None}],
    [{"type": "image_url", "image_url": "junk"}],
    [{"type": "image_url", "image_url": {"url": 5}}],
    [{"type": "image_url", "image_url": {"url": "data:image/png;base64,!!!not-base64"}}],
    [{"type": "input_image", "image_url": {"url": ""}}],
    [{"type": "input_audio", "input_audio": {"data": 5, "format": None}}],
    [{"type": "file", "file": "x"}],
    ["just a string"],
    [["nested", "list"]],
    [{"type": "text", "text": "ok"}, 7],
    {"type": "text", "text": "a dict, not a list"},
    12,
    True,
]


def test_odd_content_parts(client: httpx.Client) -> None:
    for content in ODD_PARTS:
        for role in ("user", "system", "assistant", "tool"):
            for model in ("auto", "routed"):
                body = chat_body(model=model, messages=[{"role": role, "content": content}])
                post(client, CHAT, orjson.dumps(body))
                post(client, EXPLAIN, orjson.dumps(body))
                post(client, CHAT, orjson.dumps({**body, "stream": True}))


def test_the_log_is_clean_so_far(live: ServeProcess) -> None:
    log = live.log_text()
    assert "Traceback" not in log, log[-4000:]
    assert PROVIDER_KEY not in log and CLIENT_KEY not in log
