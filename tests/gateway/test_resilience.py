"""Every upstream failure, injected for real on loopback: retries, fallbacks, timeouts, breaks.

Faults come from the fake upstreams (admin queue or ``[[fault:...]]`` markers), a closed
port, a listener that never accepts, and a scripted server that sends malformed JSON. Each
test checks what the client saw, what the upstreams saw (their request counts and
disconnects) and what the gateway counted in its metrics.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.fakes.servers import FakeUpstreamHandle
from tests.gateway.conftest import (
    TIMEOUTS,
    Gateway,
    GatewayFactory,
    PolicyFactory,
    blackhole,
    chat,
    closed_port,
    serve_scripted,
    sse_data,
    wait_until,
)

CHAT = "/v1/chat/completions"


def fast(**kw: float) -> dict[str, float]:
    return {**TIMEOUTS, **kw}


def requests_to(fake: FakeUpstreamHandle) -> int:
    count: int = fake.stats["requests"].get(CHAT, 0)
    return count


def marker(fault: str, text: str = "hello there world") -> dict[str, Any]:
    return chat(f"[[fault:{fault}]] {text}")


# -- retries, then fallback ------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_retry_before_first_byte_then_success(
    gateway: Gateway, small: FakeUpstreamHandle, big: FakeUpstreamHandle, status: int
) -> None:
    small.set_faults({"kind": "status", "status": status, "count": 1, "retry_after": 0})
    with gateway.http() as c:
        r = c.post(CHAT, json=chat())
    assert r.status_code == 200
    assert r.headers["x-effgate-model"] == "small"
    assert r.json()["model"] == "small"
    assert requests_to(small) == 2 and requests_to(big) == 0
    assert gateway.metric("effgate_retries_total", upstream="small") == 1
    assert gateway.metric("effgate_fallbacks_total") == 0
    kind = "status_429" if status == 429 else "status_5xx"
    assert gateway.metric("effgate_upstream_errors_total", upstream="small", kind=kind) == 1
    (rec,) = gateway.records(at_least=1)
    assert rec["attempts"] == 2 and rec["outcome"] == "ok" and rec["fallback_from"] == []


def test_retries_back_off(
    make_gateway: GatewayFactory, policy: PolicyFactory, small: FakeUpstreamHandle
) -> None:
    gw = make_gateway(
        policy(small={"max_retries": 3}), retry_backoff_s=0.1, retry_backoff_max_s=1.0
    )
    small.set_faults({"kind": "status", "status": 503, "count": 3})
    t0 = time.perf_counter()
    with gw.http() as c:
        r = c.post(CHAT, json=chat(model="small"))
    elapsed = time.perf_counter() - t0
    assert r.status_code == 200
    # backoff 0.1 * 2**attempt with jitter in [0.5, 1]: at least 0.05 + 0.1 + 0.2
    assert elapsed >= 0.35
    assert requests_to(small) == 4
    assert gw.metric("effgate_retries_total", upstream="small") == 3


def test_upstream_retry_after_is_honoured_up_to_the_cap(
    make_gateway: GatewayFactory, small: FakeUpstreamHandle
) -> None:
    gw = make_gateway(retry_backoff_s=0.001, retry_backoff_max_s=0.6)
    small.set_faults({"kind": "status", "status": 429, "count": 1, "retry_after": 30})
    t0 = time.perf_counter()
    with gw.http() as c:
        assert c.post(CHAT, json=chat(model="small")).status_code == 200
    assert 0.3 <= time.perf_counter() - t0 < 5  # waited, but capped at retry_backoff_max_s


def test_5xx_exhausts_retries_then_falls_back(
    gateway: Gateway, small: FakeUpstreamHandle, big: FakeUpstreamHandle
) -> None:
    small.set_faults({"kind": "status", "status": 503, "count": 2})
    with gateway.http() as c:
        r = c.post(CHAT, json=chat())
    assert r.status_code == 200
    assert r.headers["x-effgate-model"] == "big"
    assert r.json()["model"] == "big"
    assert (requests_to(small), requests_to(big)) == (2, 1)
    assert gateway.metric("effgate_retries_total", upstream="small") == 1
    assert (
        gateway.metric("effgate_fallbacks_total", route="auto", from_model="small", to_model="big")
        == 1
    )
    (rec,) = gateway.records(at_least=1)
    assert rec["model"] == "big" and rec["fallback_from"] == ["small"] and rec["attempts"] == 3


def test_connect_error_retries_then_falls_back(
    make_gateway: GatewayFactory, policy: PolicyFactory, big: FakeUpstreamHandle
) -> None:
    gw = make_gateway(
        policy(small_url=f"http://127.0.0.1:{closed_port()}/v1", small={"max_retries": 2})
    )
    with gw.http() as c:
        r = c.post(CHAT, json=chat())
    assert r.status_code == 200 and r.headers["x-effgate-model"] == "big"
    assert gw.metric("effgate_retries_total", upstream="small") == 2
    assert gw.metric("effgate_upstream_errors_total", upstream="small", kind="connect") == 3
    assert gw.metric("effgate_fallbacks_total", from_model="small", to_model="big") == 1
    assert requests_to(big) == 1


def test_streamed_request_falls_back_before_the_first_byte(
    gateway: Gateway, small: FakeUpstreamHandle, big: FakeUpstreamHandle
) -> None:
    small.set_faults({"kind": "status", "status": 500, "count": 2})
    with gateway.http() as c:
        r = c.post(CHAT, json=chat(stream=True))
    assert r.status_code == 200 and r.headers["x-effgate-model"] == "big"
    data = sse_data(r.content)
    assert data[-1] == b"[DONE]"
    assert all(orjson.loads(d)["model"] == "big" for d in data[:-1])


def test_connection_reset_falls_back(
    gateway: Gateway, small: FakeUpstreamHandle, big: FakeUpstreamHandle
) -> None:
    small.set_faults({"kind": "reset"})
    with gateway.http() as c:
        r = c.post(CHAT, json=chat())
    assert r.status_code == 200 and r.headers["x-effgate-model"] == "big"
    assert small.stats["faults_injected"] == {"reset": 1}
    assert gateway.metric("effgate_upstream_errors_total", upstream="small", kind="protocol") == 1
    assert gateway.metric("effgate_fallbacks_total", from_model="small", to_model="big") == 1


def test_4xx_is_passed_through_without_retry_or_fallback(
    gateway: Gateway, small: FakeUpstreamHandle, big: FakeUpstreamHandle
) -> None:
    with gateway.http() as c:
        r = c.post(CHAT, json=marker("status=400"))
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "injected fault: upstream returned 400"
    assert r.headers["x-effgate-upstream"] == "small"
    assert (requests_to(small), requests_to(big)) == (1, 0)
    assert gateway.metric("effgate_retries_total") == 0


# -- timeouts --------------------------------------------------------------------------------


def test_connect_timeout_falls_back(
    make_gateway: GatewayFactory, policy: PolicyFactory, big: FakeUpstreamHandle
) -> None:
    with blackhole() as url:
        gw = make_gateway(
            policy(small_url=url, small={"timeouts": fast(connect_s=0.2), "max_retries": 0})
        )
        t0 = time.perf_counter()
        with gw.http() as c:
            r = c.post(CHAT, json=chat())
        elapsed = time.perf_counter() - t0
    assert r.status_code == 200 and r.headers["x-effgate-model"] == "big"
    assert elapsed < 1.5, elapsed
    assert gw.metric("effgate_upstream_errors_total", upstream="small", kind="timeout") == 1


def test_first_byte_timeout_on_a_stream_falls_back(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
) -> None:
    gw = make_gateway(policy(small={"timeouts": fast(first_byte_s=0.2)}))
    small.set_faults({"kind": "slow_first_byte", "ms": 2000})
    t0 = time.perf_counter()
    with gw.http() as c:
        r = c.post(CHAT, json=chat(stream=True))
    assert time.perf_counter() - t0 < 1.5
    assert r.status_code == 200 and r.headers["x-effgate-model"] == "big"
    assert sse_data(r.content)[-1] == b"[DONE]"
    assert gw.metric("effgate_upstream_errors_total", upstream="small", kind="timeout") == 1
    assert requests_to(small) == 1, "a timeout is not retried on the same upstream"
    wait_until(lambda: small.stats["disconnects"] == 1, what="the slow upstream was closed")


def test_hang_times_out_and_falls_back(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
) -> None:
    gw = make_gateway(policy(small={"timeouts": fast(first_byte_s=0.2, total_s=0.3)}))
    for stream in (False, True):
        small.set_faults({"kind": "hang"})
        with gw.http() as c:
            r = c.post(CHAT, json=chat(stream=stream))
        assert r.status_code == 200 and r.headers["x-effgate-model"] == "big", stream
    assert gw.metric("effgate_upstream_errors_total", upstream="small", kind="timeout") == 2
    wait_until(lambda: small.stats["disconnects"] == 2, what="hung requests were closed")


def test_idle_gap_between_chunks_ends_with_an_error_event(
    make_gateway: GatewayFactory, policy: PolicyFactory, small: FakeUpstreamHandle
) -> None:
    gw = make_gateway(policy(small={"timeouts": fast(idle_s=0.3)}))
    t0 = time.perf_counter()
    with gw.http() as c:
        r = c.post(CHAT, json=marker("stall=3,ms=3000") | {"stream": True})
    assert time.perf_counter() - t0 < 2.0
    assert r.status_code == 200
    data = sse_data(r.content)
    assert len(data) == 4 and b"[DONE]" not in data
    err = orjson.loads(data[-1])["error"]
    assert "stalled" in err["message"] and err["code"] == "stream_interrupted"
    wait_until(
        lambda: gw.metric("effgate_requests_total", outcome="stream_error", stream="true") == 1,
        what="the request counted as a stream error",
    )
    assert gw.metric("effgate_upstream_errors_total", upstream="small", kind="timeout") == 1
    wait_until(lambda: small.stats["disconnects"] == 1, what="the stalled upstream was closed")
    (rec,) = gw.records(at_least=1)
    assert rec["outcome"] == "stream_error" and "stalled" in rec["error"]


# -- broken streams and bodies ---------------------------------------------------------------


def test_stream_cut_mid_answer_ends_with_an_error_event(
    gateway: Gateway, small: FakeUpstreamHandle
) -> None:
    with gateway.http() as c:
        r = c.post(CHAT, json=marker("cut=3") | {"stream": True})
    assert r.status_code == 200
    data = sse_data(r.content)
    assert len(data) == 4, data  # three relayed chunks, then the error event
    assert all(orjson.loads(d)["model"] == "small" for d in data[:3])
    body = orjson.loads(data[-1])
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == "stream_interrupted"
    cut = gateway.metric("effgate_upstream_errors_total", upstream="small", kind="stream_cut")
    protocol = gateway.metric("effgate_upstream_errors_total", upstream="small", kind="protocol")
    assert cut + protocol == 1
    wait_until(
        lambda: gateway.metric("effgate_requests_total", outcome="stream_error") == 1,
        what="the request counted as a stream error",
    )
    (rec,) = gateway.records(at_least=1)
    assert rec["outcome"] == "stream_error" and rec["status"] == 200


def test_stream_that_ends_without_done_is_not_a_silent_200(
    make_gateway: GatewayFactory, policy: PolicyFactory
) -> None:
    chunk = {
        "id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "mock-small",
        "choices": [{"index": 0, "delta": {"content": "partial"}, "finish_reason": None}],
    }  # fmt: skip
    # an upstream that closes cleanly after one chunk, without [DONE]
    with serve_scripted(b"data: " + orjson.dumps(chunk) + b"\n\n", "text/event-stream") as (
        upstream,
        url,
    ):
        gw = make_gateway(policy(small_url=url))
        stream = gw.sdk().chat.completions.create(
            model="small", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        seen = []
        with pytest.raises(openai.APIError):
            for c in stream:
                seen.append(c)
    assert [c.choices[0].delta.content for c in seen] == ["partial"]
    assert seen[0].model == "small"
    assert len(upstream.requests) == 1
    assert gw.metric("effgate_upstream_errors_total", upstream="small", kind="stream_cut") == 1


def test_malformed_json_from_upstream_is_502(
    make_gateway: GatewayFactory, policy: PolicyFactory
) -> None:
    with serve_scripted(b'{"id": "x", "choices": [') as (upstream, url):
        gw = make_gateway(policy(small_url=url, big_url=url))
        with gw.http() as c:
            r = c.post(CHAT, json=chat())
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["code"] == "upstream_unavailable" and "malformed" in err["message"]
    assert len(upstream.requests) == 2  # small, then the fallback big: no retries of garbage
    assert gw.metric("effgate_upstream_errors_total", kind="protocol") == 2


def test_non_object_json_from_upstream_is_502(
    make_gateway: GatewayFactory, policy: PolicyFactory
) -> None:
    with serve_scripted(b"[1, 2, 3]") as (_, url):
        gw = make_gateway(policy(small_url=url))
        with gw.http() as c:
            r = c.post(CHAT, json=chat(model="small"))
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_unavailable"


# -- the client going away -------------------------------------------------------------------


def test_client_disconnect_mid_stream_closes_the_upstream(
    make_gateway: GatewayFactory, policy: PolicyFactory, small: FakeUpstreamHandle
) -> None:
    gw = make_gateway(policy(small={"timeouts": fast(idle_s=10)}))
    body = marker("stall=3,ms=8000") | {"stream": True}
    with (
        httpx.Client(base_url=gw.base_url, timeout=10) as c,
        c.stream("POST", CHAT, json=body) as r,
    ):
        assert r.status_code == 200
        first = next(r.iter_raw())
        assert first.startswith(b"data: ")
    # leaving the block closed the connection while the upstream is stalled
    t0 = time.perf_counter()
    wait_until(lambda: small.stats["disconnects"] == 1, timeout=3, what="upstream closed")
    assert time.perf_counter() - t0 < 3
    wait_until(
        lambda: gw.metric("effgate_requests_total", outcome="cancelled", stream="true") == 1,
        what="the request counted as cancelled",
    )
    (rec,) = gw.records(at_least=1)
    assert rec["outcome"] == "cancelled"


def test_client_disconnect_before_the_first_byte_closes_the_upstream(
    gateway: Gateway, small: FakeUpstreamHandle
) -> None:
    with (
        httpx.Client(base_url=gateway.base_url, timeout=0.3) as c,
        pytest.raises(httpx.ReadTimeout),
    ):
        c.post(CHAT, json=marker("slow_first_byte=5000"))
    wait_until(lambda: small.stats["disconnects"] == 1, timeout=3, what="upstream closed")
    wait_until(
        lambda: gateway.metric("effgate_requests_total", outcome="cancelled") == 1,
        what="the request counted as cancelled",
    )
