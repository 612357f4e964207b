"""Fuzzing a live ``effgate serve`` process on loopback with hostile headers over raw HTTP:
long / non-latin-1 / CRLF / non-numeric header values, malformed header lines, and requests
the HTTP parser refuses (the process and the checks are in ``tests/gateway/fuzzing.py``).
"""

from __future__ import annotations

import socket

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.gateway import fuzzing
from tests.gateway.fuzzing import (
    CHAT,
    CLIENT_KEY,
    ERROR_KEYS,
    EXPLAIN,
    FEEDBACK,
    FUZZ,
    PROVIDER_KEY,
    chat_body,
    post,
)
from tests.gateway.serving import ServeProcess

pytestmark = pytest.mark.integration

# The module-scoped fixtures: one gateway process (and one client) for this module.
live = fuzzing.live
client = fuzzing.client


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
