"""The error model: every ``GatewayError`` renders an OpenAI body, and no error leaks internals.

Exhaustiveness stands in for a ``match`` the type checker could prove complete: the test is
parametrised over every subclass that exists at import time (all of them live in
``gateway.errors``, which a test below holds), rendered the one way errors reach a client.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

import gateway.errors as errors_module
from gateway.errors import GatewayError, InvalidRequest, RateLimited
from gateway.lifecycle import respond
from gateway.pipeline import validate
from gateway.protocol import ChatCompletionRequest
from tests.fakes.servers import FakeUpstreamHandle
from tests.gateway.conftest import (
    GatewayFactory,
    PolicyFactory,
    StubEstimator,
    chat,
    clear_of_minute_boundary,
    closed_port,
)


def all_subclasses(cls: type[GatewayError]) -> Iterator[type[GatewayError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from all_subclasses(sub)


ERRORS: list[type[GatewayError]] = sorted(
    {GatewayError, *all_subclasses(GatewayError)}, key=lambda c: c.__qualname__
)


def test_the_tree_is_what_we_expect() -> None:
    names = {c.__name__ for c in ERRORS}
    expected = {
        "InvalidRequest", "ContextLengthExceeded", "Unauthorized", "ModelNotFound",
        "RequestNotFound", "PayloadTooLarge", "RateLimited", "UpstreamUnavailable",
        "NoHealthyUpstream", "PolicyUnavailable", "UpstreamTimeout", "ConnectFailed",
        "ProtocolFailed", "TimedOut", "StreamCut",
    }  # fmt: skip
    assert expected <= names


def test_the_docstring_draws_every_error_of_the_module() -> None:
    doc = errors_module.__doc__ or ""
    own = [
        c
        for _, c in inspect.getmembers(errors_module, inspect.isclass)
        if issubclass(c, GatewayError) and c.__module__ == errors_module.__name__
    ]
    assert len(own) >= 12
    for cls in own:
        line = next((ln for ln in doc.splitlines() if f" {cls.__name__} " in ln + " "), None)
        assert line is not None, f"{cls.__name__} is missing from the tree"
        if cls is not GatewayError:
            assert str(cls.status) in line, line


@dataclass
class Rendered:
    status_code: int
    headers: dict[str, str]
    body: bytes
    media_type: str


def _render(exc: GatewayError) -> Rendered:
    """What ``lifecycle.respond`` sends for ``exc``: the one way an error reaches a client."""
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(respond(send, exc.status, exc.body(), exc.headers(), "req_test"))
    start, body = sent
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return Rendered(start["status"], headers, body["body"], headers["content-type"])


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__qualname__)
def test_every_gateway_error_renders_an_openai_body(cls: type[GatewayError]) -> None:
    exc = cls("something went wrong", param="messages")
    response = _render(exc)
    assert 400 <= response.status_code <= 599
    assert response.status_code == cls.status
    assert response.media_type == "application/json"
    body = orjson.loads(response.body)
    assert body == {
        "error": {
            "message": "something went wrong",
            "type": cls.type,
            "param": "messages",
            "code": cls.code,
        }
    }
    assert isinstance(cls.type, str) and cls.type
    assert cls.code is None or (isinstance(cls.code, str) and cls.code)
    if issubclass(cls, RateLimited):
        assert response.headers["retry-after"] == "1"


def test_rate_limited_carries_its_retry_after() -> None:
    response = _render(RateLimited("slow down", retry_after_s=17))
    assert response.status_code == 429 and response.headers["retry-after"] == "17"


def test_request_validation_error_is_400_with_a_dotted_param() -> None:
    body = {"model": "m", "messages": [{"role": "bad role", "content": "hi"}]}
    with pytest.raises(InvalidRequest) as info:
        validate(ChatCompletionRequest, body)
    response = _render(info.value)
    assert response.status_code == 400
    err = orjson.loads(response.body)["error"]
    assert err["param"] == "messages.0.role"
    assert err["type"] == "invalid_request_error" and "Input should be" in err["message"]


# -- over HTTP: unexpected exceptions, and headers on every error ----------------------------


def test_unexpected_exception_is_a_generic_500(
    make_gateway: GatewayFactory, small: FakeUpstreamHandle
) -> None:
    gw = make_gateway(estimator=StubEstimator(error=RuntimeError("secret /etc/key detail")))
    with gw.http() as c:
        r = c.post("/v1/chat/completions", json=chat(model="routed"))
    assert r.status_code == 500
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "server_error" and err["code"] == "internal_error"
    assert "secret" not in r.text and "Traceback" not in r.text and "RuntimeError" not in r.text
    assert small.stats["requests_total"] == 0


def test_unexpected_exception_still_carries_the_request_id(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(estimator=StubEstimator(error=RuntimeError("boom")))
    with gw.http() as c:
        r = c.post(
            "/v1/chat/completions", json=chat(model="routed"), headers={"x-request-id": "abc-1"}
        )
    assert r.status_code == 500
    assert r.headers.get("x-effgate-request-id") == "abc-1"
    assert "abc-1" in r.json()["error"]["message"]


HEADERS = ("x-effgate-request-id", "x-effgate-model", "x-effgate-route", "x-effgate-upstream-ms")


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("malformed", 400),
        ("unauthorized", 401),
        ("unknown_model", 404),
        ("too_large", 413),
        ("rate_limited", 429),
        ("upstream_5xx", 503),
        ("unreachable", 502),
        ("circuit_open", 503),
        ("timeout", 504),
    ],
)
def test_error_responses_carry_the_effgate_headers(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    small: FakeUpstreamHandle,
    case: str,
    status: int,
) -> None:
    fast = {"connect_s": 1.0, "first_byte_s": 0.2, "idle_s": 0.2, "total_s": 0.2}
    settings: dict[str, Any] = {"api_keys": {"sk-ok": "t"}, "max_body_bytes": 2000}
    pol = policy(small={"max_retries": 0, "timeouts": fast})
    if case == "rate_limited":
        settings["rate_limit_rpm"] = 1
    if case == "unreachable":
        pol = policy(small_url=f"http://127.0.0.1:{closed_port()}/v1", small={"max_retries": 0})
    if case == "circuit_open":
        settings["circuit_failures"] = 1
    gw = make_gateway(pol, **settings)
    headers = {"authorization": "Bearer sk-ok", "x-request-id": f"case-{case}"}
    request: dict[str, Any] = {"json": chat(model="small")}
    if case == "malformed":
        request = {"content": b"{nope"}
    elif case == "unauthorized":
        headers["authorization"] = "Bearer sk-wrong"
    elif case == "unknown_model":
        request = {"json": chat(model="nope")}
    elif case == "too_large":
        request = {"json": chat("x" * 3000, model="small")}
    elif case == "upstream_5xx":
        request = {"json": chat("[[fault:status=503]]", model="small")}
    elif case == "timeout":
        request = {"json": chat("[[fault:hang]]", model="small")}
    with gw.http(headers=headers) as c:
        if case == "rate_limited":
            clear_of_minute_boundary()
            assert c.post("/v1/chat/completions", **request).status_code == 200
        if case == "circuit_open":
            c.post("/v1/chat/completions", json=chat("[[fault:status=500]]", model="small"))
        r = c.post("/v1/chat/completions", **request)
    assert r.status_code == status, r.text
    for name in HEADERS:
        assert name in r.headers, (name, dict(r.headers))
    assert r.headers["x-effgate-request-id"] == f"case-{case}"
    assert float(r.headers["x-effgate-upstream-ms"]) >= 0
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if case in ("upstream_5xx", "unreachable", "timeout"):
        assert r.headers["x-effgate-model"] == "small"


def test_timeout_errors_report_the_time_spent_upstream(
    make_gateway: GatewayFactory, policy: PolicyFactory, small: FakeUpstreamHandle
) -> None:
    fast = {"connect_s": 1.0, "first_byte_s": 0.3, "idle_s": 0.3, "total_s": 0.3}
    gw = make_gateway(policy(small={"max_retries": 0, "timeouts": fast}))
    with gw.http() as c:
        r = c.post("/v1/chat/completions", json=chat("[[fault:hang]]", model="small"))
    assert r.status_code == 504
    assert float(r.headers["x-effgate-upstream-ms"]) >= 250
