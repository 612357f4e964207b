"""A request's deadline (the policy's ``deadline_s``, or its route's) against upstreams that
hang or keep failing, for real on loopback: a call gets at most what is left of it, no
retry or fallback starts past it, and the client gets an OpenAI-shaped 504 in time. A call
cut short by the deadline (not by its own timeouts) says nothing about the upstream's
health."""

from __future__ import annotations

import time

import pytest

from tests.fakes.servers import FakeUpstreamHandle
from tests.gateway.conftest import TIMEOUTS, GatewayFactory, PolicyFactory, chat, wait_until

CHAT = "/v1/chat/completions"
SLOW_OK = {**TIMEOUTS, "first_byte_s": 5.0, "total_s": 5.0}


def requests_to(fake: FakeUpstreamHandle) -> int:
    count: int = fake.stats["requests"].get(CHAT, 0)
    return count


@pytest.mark.parametrize("stream", [False, True])
def test_the_deadline_cuts_a_hang_and_no_fallback_starts(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
    stream: bool,
) -> None:
    gw = make_gateway(policy(small={"timeouts": SLOW_OK}, deadline_s=0.4))
    for _ in range(6):  # more than the circuit's failure threshold
        small.set_faults({"kind": "hang"})
        t0 = time.perf_counter()
        with gw.http() as c:
            r = c.post(CHAT, json=chat(stream=stream))
        assert time.perf_counter() - t0 < 2.0  # not small's own 5 s
        assert r.status_code == 504, r.text
        err = r.json()["error"]
        assert err["code"] == "upstream_timeout" and "deadline of 0.4 s" in err["message"]
    assert requests_to(big) == 0  # nothing started past the deadline
    # cut short by the deadline: small's circuit stays closed, so every request reached it
    assert requests_to(small) == 6
    wait_until(lambda: small.stats["disconnects"] == 6, what="the hung calls closed")


def test_a_route_deadline_wins_and_a_named_model_takes_the_policy_s(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
) -> None:
    routes = [{"name": "auto", "candidates": ["small", "big"], "deadline_s": 0.3}]
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


def test_retry_pauses_end_at_the_deadline(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
) -> None:
    # 503 with Retry-After: 30 on every try; without a deadline the retries would wait
    gw = make_gateway(policy(small={"max_retries": 3}, deadline_s=0.5), retry_backoff_max_s=30.0)
    small.set_faults({"kind": "status", "status": 503, "retry_after": 30, "count": 10})
    t0 = time.perf_counter()
    with gw.http() as c:
        r = c.post(CHAT, json=chat())
    assert time.perf_counter() - t0 < 2.0
    assert r.status_code == 504 and "deadline of 0.5 s" in r.json()["error"]["message"]
    assert requests_to(small) == 1 and requests_to(big) == 0
