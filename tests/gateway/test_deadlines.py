"""A request's deadline (the policy's ``deadline_s``, or its route's) against upstreams that
hang, do not accept or keep failing, for real on loopback: a call gets at most what is left
of it, no retry or fallback starts past it, and the client gets an OpenAI-shaped 504 in
time. A call the deadline cuts short is that upstream's timeout: a hung upstream's circuit
still opens, and traffic moves to the fallbacks."""

from __future__ import annotations

import time

import pytest

from tests.fakes.servers import FakeUpstreamHandle
from tests.gateway.conftest import (
    TIMEOUTS,
    GatewayFactory,
    PolicyFactory,
    blackhole,
    chat,
    wait_until,
)

CHAT = "/v1/chat/completions"
SLOW_OK = {**TIMEOUTS, "first_byte_s": 5.0, "total_s": 5.0}


def requests_to(fake: FakeUpstreamHandle) -> int:
    count: int = fake.stats["requests"].get(CHAT, 0)
    return count


@pytest.mark.parametrize("stream", [False, True])
def test_the_deadline_cuts_a_hang_until_the_circuit_moves_traffic_on(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
    stream: bool,
) -> None:
    gw = make_gateway(policy(small={"timeouts": SLOW_OK}, deadline_s=0.4), circuit_failures=5)
    for _ in range(5):  # the circuit's failure threshold
        small.set_faults({"kind": "hang"})
        t0 = time.perf_counter()
        with gw.http() as c:
            r = c.post(CHAT, json=chat(stream=stream))
        assert time.perf_counter() - t0 < 2.0  # not small's own 5 s
        assert r.status_code == 504, r.text
        err = r.json()["error"]
        assert err["code"] == "upstream_timeout" and "deadline of 0.4 s" in err["message"]
    assert requests_to(big) == 0  # nothing started past the deadline
    wait_until(lambda: small.stats["disconnects"] == 5, what="the hung calls closed")
    # each cut was small's timeout: its circuit is open now, and the fallback answers
    with gw.http() as c:
        r = c.post(CHAT, json=chat(stream=stream))
    assert r.status_code == 200 and r.headers["x-effgate-model"] == "big"
    assert requests_to(small) == 5


def test_a_connect_timeout_under_a_deadline_still_falls_back(
    make_gateway: GatewayFactory, policy: PolicyFactory, big: FakeUpstreamHandle
) -> None:
    # the model's own connect_s ends the call long before the deadline: not the deadline's
    with blackhole() as url:
        small = {"timeouts": {**SLOW_OK, "connect_s": 0.2}, "max_retries": 0}
        gw = make_gateway(policy(small_url=url, small=small, deadline_s=3.0))
        t0 = time.perf_counter()
        with gw.http() as c:
            r = c.post(CHAT, json=chat())
        elapsed = time.perf_counter() - t0
    assert r.status_code == 200 and r.headers["x-effgate-model"] == "big", r.text
    assert elapsed < 1.5, elapsed
    assert gw.metric("effgate_upstream_errors_total", upstream="small", kind="timeout") == 1


def test_a_route_deadline_wins_and_a_named_model_takes_the_policy_s(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
) -> None:
    # a route may be named "direct" (the route label of a named model): it lends nothing
    routes = [
        {"name": "auto", "candidates": ["small", "big"], "deadline_s": 0.3},
        {"name": "direct", "candidates": ["big"], "deadline_s": 0.05},
    ]
    fast_small = {**TIMEOUTS, "first_byte_s": 0.8, "total_s": 0.8}
    gw = make_gateway(policy(small={"timeouts": fast_small}, routes=routes, deadline_s=30.0))
    with gw.http() as c:
        small.set_faults({"kind": "hang"})
        by_route = c.post(CHAT, json=chat())
        small.set_faults({"kind": "hang"})
        t0 = time.perf_counter()
        by_name = c.post(CHAT, json=chat(model="small"))
        named_s = time.perf_counter() - t0
    assert by_route.status_code == 504 and "deadline of 0.3 s" in by_route.text
    # the named model has the policy's 30 s: its own 0.8 s total timeout ends it
    assert by_name.status_code == 504 and "deadline" not in by_name.text
    assert 0.7 < named_s < 5.0


def test_a_fallback_within_the_deadline_still_answers(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
) -> None:
    fast_small = {**TIMEOUTS, "first_byte_s": 0.2, "total_s": 0.3}
    gw = make_gateway(policy(small={"timeouts": fast_small}, deadline_s=5.0))
    small.set_faults({"kind": "hang"})
    with gw.http() as c:
        r = c.post(CHAT, json=chat())
    assert r.status_code == 200 and r.headers["x-effgate-model"] == "big"
    assert gw.metric("effgate_upstream_errors_total", upstream="small", kind="timeout") == 1


def test_a_retry_that_cannot_start_in_time_gives_way_to_the_fallback(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
) -> None:
    # 503 with Retry-After: 30 on every try: the retry's pause would pass the deadline, so
    # the remaining time goes to the next model instead of a wait
    gw = make_gateway(policy(small={"max_retries": 3}, deadline_s=2.0), retry_backoff_max_s=30.0)
    small.set_faults({"kind": "status", "status": 503, "retry_after": 30, "count": 10})
    t0 = time.perf_counter()
    with gw.http() as c:
        r = c.post(CHAT, json=chat())
    assert time.perf_counter() - t0 < 1.5
    assert r.status_code == 200 and r.headers["x-effgate-model"] == "big"
    assert requests_to(small) == 1 and requests_to(big) == 1
    assert gw.metric("effgate_retries_total", upstream="small") == 0  # none happened
