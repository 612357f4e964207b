"""Every client for OpenAI-compatible upstreams keeps the same contract.

The gateway suites run on the default client (httptools); this file drives the same answers
and failure kinds through each of them (``EFFGATE_HTTP_CLIENT``), so that every error-mapping
seam stays honest.
"""

from __future__ import annotations

import pytest

from tests.fakes.servers import FakeUpstreamHandle
from tests.gateway.conftest import (
    TIMEOUTS,
    Gateway,
    GatewayFactory,
    PolicyFactory,
    chat,
    closed_port,
    sse_data,
)

CHAT = "/v1/chat/completions"


CLIENTS = ["httptools", "aiohttp", "httpx"]


@pytest.fixture(params=CLIENTS)
def client(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def gw(make_gateway: GatewayFactory, policy: PolicyFactory, client: str) -> Gateway:
    fast = {**TIMEOUTS, "first_byte_s": 1.0, "total_s": 1.5, "idle_s": 0.5}
    return make_gateway(
        policy(small={"timeouts": fast, "max_retries": 1}, big={"timeouts": fast}),
        http_client=client,
    )


def test_json_and_stream(gw: Gateway, small: FakeUpstreamHandle) -> None:
    with gw.http() as c:
        r = c.post(CHAT, json=chat())
        assert r.status_code == 200 and r.json()["model"] == "small"
        s = c.post(CHAT, json=chat(stream=True, stream_options={"include_usage": True}))
    events = sse_data(s.content)
    assert events[-1] == b"[DONE]" and b'"effgate_cost_usd"' in events[-2]
    assert small.stats["recent"][-1]["body"]["stream_options"] == {"include_usage": True}


def test_retry_then_fallback(
    gw: Gateway, small: FakeUpstreamHandle, big: FakeUpstreamHandle
) -> None:
    small.set_faults({"kind": "status", "status": 503, "count": 2})
    with gw.http() as c:
        r = c.post(CHAT, json=chat())
    assert r.status_code == 200 and r.headers["x-effgate-model"] == "big"
    assert gw.metric("effgate_retries_total", upstream="small") == 1
    assert gw.metric("effgate_fallbacks_total", from_model="small", to_model="big") == 1


@pytest.mark.parametrize(("fault", "kind"), [("reset", "protocol"), ("hang", "timeout")])
def test_failures_fall_back(
    gw: Gateway, small: FakeUpstreamHandle, big: FakeUpstreamHandle, fault: str, kind: str
) -> None:
    small.set_faults({"kind": fault, "count": 2})
    with gw.http() as c:
        r = c.post(CHAT, json=chat())
    assert r.status_code == 200 and r.headers["x-effgate-model"] == "big"
    assert gw.metric("effgate_upstream_errors_total", upstream="small", kind=kind) >= 1


def test_cut_stream_ends_with_an_error_event(gw: Gateway) -> None:
    with gw.http() as c:
        r = c.post(CHAT, json=chat("[[fault:cut=3]] hello there", stream=True))
    assert r.status_code == 200
    assert sse_data(r.content)[-1].startswith(b'{"error"')


def test_unreachable_is_502(
    make_gateway: GatewayFactory, policy: PolicyFactory, client: str
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    gw = make_gateway(
        policy(
            small_url=url,
            big_url=url,
            small={"max_retries": 0},
            big={"max_retries": 0},
        ),
        http_client=client,
    )
    with gw.http() as c:
        r = c.post(CHAT, json=chat())
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_unavailable"


@pytest.mark.parametrize(("status", "kind"), [(400, "status_4xx"), (429, "status_429")])
def test_upstream_errors_pass_through(
    make_gateway: GatewayFactory, policy: PolicyFactory, client: str, status: int, kind: str
) -> None:
    gw = make_gateway(policy(small={"max_retries": 0}), http_client=client)
    with gw.http() as c:
        r = c.post(CHAT, json=chat(f"[[fault:status={status}]] hi", model="small"))
        s = c.post(CHAT, json=chat(f"[[fault:status={status}]] hi", model="small", stream=True))
    for resp in (r, s):
        assert resp.status_code == status
        assert resp.headers["x-effgate-upstream"] == "small"
        assert "error" in resp.json()
    assert gw.metric("effgate_upstream_errors_total", upstream="small", kind=kind) == 2


def test_the_upstream_sees_one_connection_for_many_requests(
    make_gateway: GatewayFactory, policy: PolicyFactory, small: FakeUpstreamHandle, client: str
) -> None:
    """Keep-alive: sequential requests reuse one pooled connection."""
    gw = make_gateway(policy(), http_client=client)
    with gw.http() as c:
        for _ in range(5):
            assert c.post(CHAT, json=chat(model="small")).status_code == 200
        s = c.post(CHAT, json=chat(model="small", stream=True))
        assert sse_data(s.content)[-1] == b"[DONE]"
        assert c.post(CHAT, json=chat(model="small")).status_code == 200
    assert small.stats["connections"] == 1, small.stats
