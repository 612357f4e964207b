"""Feedback belongs to the tenant that made the request, and does not spend its rate limit."""

from __future__ import annotations

from tests.fakes.servers import FakeUpstreamHandle
from tests.gateway.conftest import GatewayFactory, chat, clear_of_minute_boundary, sse_data

KEYS = {"sk-a": "team-a", "sk-b": "team-b"}


def test_a_tenant_cannot_rate_another_tenants_request(
    make_gateway: GatewayFactory, small: FakeUpstreamHandle
) -> None:
    gw = make_gateway(api_keys=KEYS)
    a = {"authorization": "Bearer sk-a"}
    b = {"authorization": "Bearer sk-b"}
    with gw.http() as c:
        r = c.post("/v1/chat/completions", json=chat(), headers=a)
        rid = r.headers["x-effgate-request-id"]
        other = c.post("/v1/feedback", json={"request_id": rid, "accepted": True}, headers=b)
        own = c.post("/v1/feedback", json={"request_id": rid, "accepted": True}, headers=a)
    assert other.status_code == 404
    assert other.json()["error"]["code"] == "request_not_found"
    assert own.status_code == 200
    assert gw.metric("effgate_outcomes_total", outcome="accepted") == 1


def test_feedback_does_not_spend_the_rate_limit(
    make_gateway: GatewayFactory, small: FakeUpstreamHandle
) -> None:
    gw = make_gateway(rate_limit_rpm=2)
    clear_of_minute_boundary()
    with gw.http() as c:
        rid = c.post("/v1/chat/completions", json=chat()).headers["x-effgate-request-id"]
        for _ in range(3):
            fb = c.post("/v1/feedback", json={"request_id": rid, "score": 0.9})
            assert fb.status_code == 200
        assert c.post("/v1/chat/completions", json=chat()).status_code == 200
        assert c.post("/v1/chat/completions", json=chat()).status_code == 429


def test_a_cut_stream_counts_as_stream_cut(
    make_gateway: GatewayFactory, small: FakeUpstreamHandle
) -> None:
    gw = make_gateway()
    with gw.http() as c:
        r = c.post("/v1/chat/completions", json=chat("[[fault:cut=3]] hi there", stream=True))
    assert sse_data(r.content)[-1].startswith(b'{"error"')
    assert gw.metric("effgate_upstream_errors_total", upstream="small", kind="stream_cut") == 1
    assert gw.metric("effgate_upstream_errors_total", upstream="small", kind="protocol") == 0
