"""One owner per request: every endpoint's errors are counted and recorded the same way.

For each /v1 endpoint and each error class it can meet, the response is OpenAI-shaped with the
error's own status, ``effgate_requests_total`` counts it once under the endpoint with the
error's outcome, and the endpoints that write the request log (chat, embeddings, explain)
write exactly one record with the same status and outcome. Successes are checked the same way.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.fakes.servers import FakeUpstreamHandle
from tests.gateway.conftest import (
    GatewayFactory,
    PolicyFactory,
    StubEstimator,
    chat,
    clear_of_minute_boundary,
    closed_port,
    wait_until,
)

KEY = "sk-lifecycle"
AUTH = {"authorization": f"Bearer {KEY}"}
FAST = {"connect_s": 1.0, "first_byte_s": 0.3, "idle_s": 0.3, "total_s": 0.3}


@dataclass(frozen=True)
class Case:
    endpoint: str  # the metric label / record field
    method: str
    path: str
    error: str  # what goes wrong: ok, unauthorized, malformed, ...
    status: int
    outcome: str
    code: str | None = None

    @property
    def id(self) -> str:
        return f"{self.endpoint}-{self.error}"


def _embed(model: str = "small", text: str = "hello") -> dict[str, Any]:
    return {"model": model, "input": text}


CHAT, EMB, EXPLAIN = "/v1/chat/completions", "/v1/embeddings", "/v1/route/explain"
FB = "/v1/feedback"
CASES = [
    # chat
    Case("chat", "POST", CHAT, "ok", 200, "ok"),
    Case("chat", "POST", CHAT, "unauthorized", 401, "client_error", "invalid_api_key"),
    Case("chat", "POST", CHAT, "malformed", 400, "client_error"),
    Case("chat", "POST", CHAT, "invalid_field", 400, "client_error"),
    Case("chat", "POST", CHAT, "too_large", 413, "client_error", "request_too_large"),
    Case("chat", "POST", CHAT, "rate_limited", 429, "client_error", "rate_limit_exceeded"),
    Case("chat", "POST", CHAT, "unknown_model", 404, "client_error", "model_not_found"),
    Case("chat", "POST", CHAT, "upstream_4xx", 400, "client_error"),
    Case("chat", "POST", CHAT, "upstream_5xx", 503, "upstream_error"),
    Case("chat", "POST", CHAT, "unreachable", 502, "upstream_error", "upstream_unavailable"),
    Case("chat", "POST", CHAT, "timeout", 504, "timeout", "upstream_timeout"),
    Case("chat", "POST", CHAT, "internal", 500, "internal_error", "internal_error"),
    # embeddings
    Case("embeddings", "POST", EMB, "ok", 200, "ok"),
    Case("embeddings", "POST", EMB, "unauthorized", 401, "client_error", "invalid_api_key"),
    Case("embeddings", "POST", EMB, "malformed", 400, "client_error"),
    Case("embeddings", "POST", EMB, "invalid_field", 400, "client_error"),
    Case("embeddings", "POST", EMB, "too_large", 413, "client_error", "request_too_large"),
    Case("embeddings", "POST", EMB, "rate_limited", 429, "client_error", "rate_limit_exceeded"),
    Case("embeddings", "POST", EMB, "unknown_model", 404, "client_error", "model_not_found"),
    Case("embeddings", "POST", EMB, "upstream_5xx", 503, "upstream_error"),
    Case("embeddings", "POST", EMB, "unreachable", 502, "upstream_error", "upstream_unavailable"),
    # explain
    Case("explain", "POST", EXPLAIN, "ok", 200, "ok"),
    Case("explain", "POST", EXPLAIN, "unauthorized", 401, "client_error", "invalid_api_key"),
    Case("explain", "POST", EXPLAIN, "malformed", 400, "client_error"),
    Case("explain", "POST", EXPLAIN, "invalid_field", 400, "client_error"),
    Case("explain", "POST", EXPLAIN, "too_large", 413, "client_error", "request_too_large"),
    Case("explain", "POST", EXPLAIN, "rate_limited", 429, "client_error", "rate_limit_exceeded"),
    Case("explain", "POST", EXPLAIN, "unknown_model", 404, "client_error", "model_not_found"),
    Case("explain", "POST", EXPLAIN, "internal", 500, "internal_error", "internal_error"),
    # feedback and models: counted, not written to the request log
    Case("feedback", "POST", FB, "unauthorized", 401, "client_error", "invalid_api_key"),
    Case("feedback", "POST", FB, "malformed", 400, "client_error"),
    Case("feedback", "POST", FB, "invalid_field", 400, "client_error"),
    Case("feedback", "POST", FB, "unknown_request", 404, "client_error", "request_not_found"),
    Case("models", "GET", "/v1/models", "ok", 200, "ok"),
    Case("models", "GET", "/v1/models", "unauthorized", 401, "client_error", "invalid_api_key"),
    Case("models", "GET", "/v1/models", "rate_limited", 429, "client_error",
         "rate_limit_exceeded"),
    Case("models", "GET", "/v1/models/nope", "unknown_model", 404, "client_error",
         "model_not_found"),
]  # fmt: skip
RECORDED = {"chat", "embeddings", "explain"}


class Boom(RuntimeError):
    pass


def _request(case: Case) -> dict[str, Any]:
    """The request that makes ``case.error`` happen (headers, body)."""
    headers = dict(AUTH)
    body: dict[str, Any] | None
    if case.endpoint == "embeddings":
        body = _embed()
    elif case.endpoint == "feedback":
        body = {"request_id": "req_unknown", "accepted": True}
    elif case.endpoint == "models":
        body = None
    else:
        body = chat(model="routed" if case.error == "internal" else "small")
    kw: dict[str, Any] = {"headers": headers}
    e = case.error
    if e == "unauthorized":
        headers["authorization"] = "Bearer sk-wrong"
    elif e == "malformed":
        kw["content"] = b'{"model": '
        return kw
    elif e == "invalid_field":
        body = {"request_id": ""} if case.endpoint == "feedback" else {"model": "small"}
    elif e == "too_large":
        body = _embed(text="x" * 5000) if case.endpoint == "embeddings" else chat("x" * 5000)
    elif e == "unknown_model":
        body = None if case.endpoint == "models" else {**(body or {}), "model": "nope"}
    elif e in ("upstream_4xx", "upstream_5xx", "timeout"):
        marker = {"upstream_4xx": "status=400", "upstream_5xx": "status=503", "timeout": "hang"}
        if case.endpoint == "chat":
            body = chat(f"[[fault:{marker[e]}]] hi", model="small")
    if body is not None:
        kw["json"] = body
    return kw


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_endpoint_counts_and_records_its_errors_the_same_way(
    make_gateway: GatewayFactory, policy: PolicyFactory, small: FakeUpstreamHandle, case: Case
) -> None:
    pol = policy(small={"max_retries": 0, "timeouts": FAST})
    if case.error == "unreachable":
        pol = policy(small_url=f"http://127.0.0.1:{closed_port()}/v1", small={"max_retries": 0})
    settings: dict[str, Any] = {"api_keys": {KEY: "team"}, "max_body_bytes": 2000}
    if case.error == "rate_limited":
        settings["rate_limit_rpm"] = 1
    estimator = StubEstimator(error=Boom("no") if case.error == "internal" else None)
    gw = make_gateway(pol, estimator=estimator, **settings)
    if case.error == "upstream_5xx" and case.endpoint == "embeddings":
        small.set_faults({"kind": "status", "status": 503})
    with gw.http() as c:
        if case.error == "rate_limited":  # spend the one request of the minute first
            clear_of_minute_boundary()
            c.get("/v1/models", headers=AUTH)
        r = c.request(case.method, case.path, **_request(case))
    assert r.status_code == case.status, r.text
    if case.status >= 400:
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        if case.code is not None:
            assert err["code"] == case.code
    assert r.headers["x-effgate-request-id"].startswith("req_")
    labels = {"endpoint": case.endpoint, "status_class": f"{case.status // 100}xx"}
    wait_until(
        lambda: gw.metric("effgate_requests_total", **labels, outcome=case.outcome) == 1,
        what=f"{case.id} counted once",
    )
    assert gw.metric("effgate_requests_total", endpoint=case.endpoint) == 1 + (
        case.error == "rate_limited" and case.endpoint == "models"
    )
    assert gw.metric("effgate_request_duration_seconds_count", endpoint=case.endpoint) >= 1
    requests = [
        rec
        for rec in gw.records(at_least=1 if case.endpoint in RECORDED else 0, timeout=5)
        if rec["type"] == "request"
    ]
    if case.endpoint in RECORDED:
        (rec,) = requests
        assert rec["endpoint"] == case.endpoint
        assert rec["id"] == r.headers["x-effgate-request-id"]
        assert (rec["status"], rec["outcome"]) == (case.status, case.outcome)
        assert (rec["error"] is None) == (case.status < 400)
    else:
        assert requests == [], "feedback and models calls are counted, not logged"


def test_an_explain_call_is_not_a_served_request(
    make_gateway: GatewayFactory, small: FakeUpstreamHandle
) -> None:
    """explain shows a decision: no routing decision, token or cost metric moves for it."""
    gw = make_gateway()
    with gw.http() as c:
        assert c.post(EXPLAIN, json=chat(model="routed")).status_code == 200
    (rec,) = gw.records(at_least=1)
    assert rec["endpoint"] == "explain" and rec["model"] is None and rec["decision"] is not None
    assert gw.metric("effgate_requests_total", endpoint="explain", outcome="ok") == 1
    assert gw.metric("effgate_routing_decisions_total") == 0
    assert gw.metric("effgate_cost_usd_total") == 0
    assert small.stats["requests_total"] == 0


def test_a_client_that_leaves_is_counted_once_as_cancelled(
    make_gateway: GatewayFactory, small: FakeUpstreamHandle
) -> None:
    gw = make_gateway()
    with gw.http(timeout=0.3) as c, pytest.raises(httpx.ReadTimeout):
        c.post(CHAT, json=chat("[[fault:hang]] hi", model="small"))
    wait_until(
        lambda: gw.metric("effgate_requests_total", endpoint="chat", outcome="cancelled") == 1,
        what="the cancelled request counted",
    )
    (rec,) = gw.records(at_least=1)
    assert (rec["status"], rec["outcome"]) == (499, "cancelled")
    assert gw.metric("effgate_requests_total") == 1


def test_a_client_that_leaves_while_sending_its_body_is_cancelled_not_an_error(
    make_gateway: GatewayFactory, small: FakeUpstreamHandle
) -> None:
    gw = make_gateway()
    host, port = gw.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b'content-length: 1000\r\n\r\n{"model": "small", "messages": ['
        )
        time.sleep(0.2)  # the handler is waiting for the rest of the body
    wait_until(
        lambda: gw.metric("effgate_requests_total", endpoint="chat", outcome="cancelled") == 1,
        what="the half-sent request counted as cancelled",
    )
    assert gw.metric("effgate_requests_total", outcome="internal_error") == 0
    (rec,) = gw.records(at_least=1)
    assert (rec["status"], rec["outcome"]) == (499, "cancelled")
    assert small.stats["requests_total"] == 0
