"""Fuzzing a live ``effgate serve`` process on loopback (the session's fake upstreams behind it).

    schemathesis   the gateway's own /openapi.json: generated valid and invalid requests for
                   every operation; no 5xx, and responses as documented
    hypothesis     hostile raw bodies and headers over real HTTP: deep nesting, huge strings,
                   wrong types in every field, invalid UTF-8, NaN and Infinity, odd content
                   parts, long / non-latin-1 / CRLF / non-numeric header values

Every answer must be below 500, a 4xx must be the OpenAI error body, and neither the client
key (EFFGATE_API_KEYS) nor the provider key (the models' api_key_env) may appear in any
response; the process log must hold no traceback when the module is done. Examples are
bounded (``FUZZ_EXAMPLES``) so the module takes well under a minute on two cores.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
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

from tests.fakes.servers import FakeUpstreamHandle
from tests.gateway.conftest import SKILLS, policy_dict
from tests.gateway.serving import SLOW_OK, ServeProcess, serve_process

pytestmark = pytest.mark.integration

CLIENT_KEY = "sk-effgate-fuzz-client-7d41c2a9"
PROVIDER_KEY = "sk-provider-fuzz-secret-3b9e0f55"
PROVIDER_ENV = "EFFGATE_FUZZ_PROVIDER_KEY"
AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}
SECRETS = (CLIENT_KEY, PROVIDER_KEY, PROVIDER_KEY.encode(), CLIENT_KEY.encode())
FUZZ_EXAMPLES = 40  # per hypothesis test
SCHEMA_EXAMPLES = 10  # per operation, in schemathesis's fuzzing phase (after its coverage phase)
CHAT, EMB, EXPLAIN, FEEDBACK = (
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/route/explain",
    "/v1/feedback",
)
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory,
    small_fake: FakeUpstreamHandle,
    big_fake: FakeUpstreamHandle,
) -> Iterator[ServeProcess]:
    """One gateway process for the module: client keys, a provider key, input limits on."""
    tmp = tmp_path_factory.mktemp("fuzz")
    model = {"timeouts": SLOW_OK, "api_key_env": PROVIDER_ENV}
    policy = policy_dict(  # route auto (no bar), route routed (bar 0.8: the real estimator)
        small_fake.base_url,
        big_fake.base_url,
        small={**model, "skill": SKILLS["small"]},
        big={**model, "skill": SKILLS["big"]},
        limits={"max_messages": 64, "max_chars": 200_000, "max_tokens": 4096},
    )
    env = {"EFFGATE_API_KEYS": json.dumps({CLIENT_KEY: "fuzz"}), PROVIDER_ENV: PROVIDER_KEY}
    with serve_process(tmp, small_fake, big_fake, policy=policy, **env) as gw:
        yield gw
        log = gw.log_text()
        assert "Traceback" not in log, log[-4000:]
        assert PROVIDER_KEY not in log and CLIENT_KEY not in log


@pytest.fixture(scope="module")
def client(live: ServeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.origin, timeout=30) as c:
        yield c


def check(r: httpx.Response) -> None:
    """Below 500, no traceback or key anywhere in it, and OpenAI-shaped when an error."""
    raw = r.content
    assert r.status_code < 500, (r.status_code, raw[:500])
    assert b"Traceback" not in raw, raw[:500]
    head = b"\n".join(k + b": " + v for k, v in r.headers.raw)
    for secret in (CLIENT_KEY.encode(), PROVIDER_KEY.encode()):
        assert secret not in raw and secret not in head, raw[:500]
    if r.status_code >= 400:
        body = orjson.loads(raw)
        assert set(body) == {"error"}, body
        err = body["error"]
        assert set(err) == ERROR_KEYS, err
        assert isinstance(err["message"], str) and isinstance(err["type"], str)
        assert err["param"] is None or isinstance(err["param"], str)
        assert err["code"] is None or isinstance(err["code"], str)


def post(client: httpx.Client, path: str, body: bytes, **headers: Any) -> httpx.Response:
    r = client.post(
        path, content=body, headers={**AUTH, "content-type": "application/json", **headers}
    )
    check(r)
    return r


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": "hi"}], **extra}


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


FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


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


# -- hostile headers ---------------------------------------------------------------------

HEADER_VALUES: list[bytes] = [
    b"",
    b" ",
    b"nan",
    b"NaN",
    b"inf",
    b"-inf",
    b"Infinity",
    b"1e999",
    b"-1",
    b"-0",
    b"0x10",
    b"1_000",
    b"\xc3\xa9\xe2\x82\xac",  # UTF-8, not latin-1 text
    b"\xff\xfe\x80",
    b"\x7f",
    b"9" * 400,
    b"a" * 8000,
    b"auto",
    b"small",
    b"../../etc/passwd",
    b"%00",
]
HEADER_NAMES = [
    "x-effgate-quality-bar",
    "x-effgate-max-cost-usd",
    "x-effgate-route",
    "x-effgate-task",
    "x-request-id",
    "content-type",
]


def raw_http(port: int, request: bytes) -> bytes:
    """Send ``request`` as is on a fresh connection; return the server's whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
        return b"".join(chunks)


def raw_post(port: int, path: str, headers: list[bytes], body: bytes) -> tuple[int, bytes]:
    """POST with header lines sent byte for byte (no client library vetting them); the
    answer is checked like ``check`` does; returns its status and body."""
    request = b"".join(
        [
            b"POST " + path.encode() + b" HTTP/1.1\r\nhost: 127.0.0.1\r\n",
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            *(h + b"\r\n" for h in headers),
            b"connection: close\r\n\r\n",
            body,
        ]
    )
    answer = raw_http(port, request)
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    status = int(answer[9:12])
    head, _, out = answer.partition(b"\r\n\r\n")
    assert status < 500, answer[:500]
    assert b"Traceback" not in answer
    assert PROVIDER_KEY.encode() not in answer
    assert CLIENT_KEY.encode() not in answer
    if status >= 400:
        err = orjson.loads(out)["error"]
        assert set(err) == ERROR_KEYS, err
    return status, out


AUTH_LINE = b"authorization: Bearer " + CLIENT_KEY.encode()


def test_hostile_header_values(live: ServeProcess) -> None:
    for value in HEADER_VALUES:
        hostile_header(live, value)


def hostile_header(live: ServeProcess, value: bytes) -> None:
    body = orjson.dumps(chat_body(model="routed"))
    for name in HEADER_NAMES:
        line = name.encode() + b": " + value
        for path in (CHAT, EXPLAIN):
            raw_post(live.port, path, [AUTH_LINE, line], body)
    for auth in (b"Bearer " + value, value, b"bearer  " + value + b" x"):
        status, _ = raw_post(live.port, CHAT, [b"authorization: " + auth], body)
        assert status in (400, 401)  # 400: the HTTP parser refuses the header (a control byte)
    raw_post(live.port, FEEDBACK, [AUTH_LINE, b"x-request-id: " + value], b"{}")


@FUZZ
@given(
    headers=st.lists(
        st.tuples(st.sampled_from(HEADER_NAMES), st.binary(max_size=100)).map(
            lambda t: t[0].encode() + b": " + t[1].replace(b"\r", b"").replace(b"\n", b"")
        ),
        max_size=4,
    )
)
def test_random_header_values(live: ServeProcess, headers: list[bytes]) -> None:
    raw_post(live.port, EXPLAIN, [AUTH_LINE, *headers], orjson.dumps(chat_body()))


CRLF_HEADERS = [
    b"x-effgate-route: auto\r\nx-injected: 1",  # a CRLF in a value is just another header
    b"x-effgate-task: a\rb",
    b"x-effgate-task: a\nb",
    b"x-effgate-quality-bar: 0.5\r\n\r\nGET /metrics HTTP/1.1",
    b"x-effgate-route: \x00",
    b"bad header name: 1",
    b"x-effgate-route:" + b"r" * 70_000,
    b"content-length: 5",  # a second, conflicting content-length
    b"transfer-encoding: chunked",
]


def test_crlf_and_malformed_headers(live: ServeProcess) -> None:
    for header in CRLF_HEADERS:
        raw_post(live.port, EXPLAIN, [AUTH_LINE, header], orjson.dumps(chat_body()))


def test_a_request_the_http_parser_refuses_is_an_openai_shaped_400(live: ServeProcess) -> None:
    """uvicorn answers these itself, in text/plain; effgate's protocol answers in JSON."""
    for header in (b"x-effgate-task: a\rb", b"x-effgate-route: \x7f", b"bad header name: 1"):
        status, out = raw_post(live.port, EXPLAIN, [AUTH_LINE, header], b"{}")
        assert status == 400
        assert orjson.loads(out)["error"]["type"] == "invalid_request_error"


def test_numeric_strings_and_non_finite_headers_are_400s(client: httpx.Client) -> None:
    """Found by this module: these were 500s (a str compared to the max_tokens cap, and an
    infinite quality bar handed to the engine)."""
    for name in ("max_tokens", "max_completion_tokens"):
        r = post(client, EXPLAIN, orjson.dumps(chat_body(**{name: "5000"})))
        assert r.status_code == 400 and r.json()["error"]["code"] == "integer_above_max_value"
    for value in (b"inf", b"-inf", b"1e999", b"nan"):
        r = post(
            client,
            CHAT,
            orjson.dumps(chat_body(model="routed")),
            **{"x-effgate-quality-bar": value},
        )
        assert r.status_code == 400, r.text


def test_the_log_is_clean_so_far(live: ServeProcess) -> None:
    log = live.log_text()
    assert "Traceback" not in log, log[-4000:]
    assert PROVIDER_KEY not in log and CLIENT_KEY not in log
