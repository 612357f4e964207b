"""Circuit breakers: the state machine on an injected clock, then the gateway's breakers live.

The live tests fail an upstream for real (fake faults), read ``effgate_circuit_state`` from
/metrics, and check which upstream each request reached.
"""

from __future__ import annotations

import time

import httpx
import pytest

from gateway.health import CLOSED, HALF_OPEN, OPEN, PASS, PROBE, REFUSED, Health
from tests.fakes.clock import FakeClock
from tests.fakes.servers import FakeUpstreamHandle
from tests.gateway.conftest import Gateway, GatewayFactory, PolicyFactory, chat, wait_until

CHAT = "/v1/chat/completions"


def requests_to(fake: FakeUpstreamHandle) -> int:
    count: int = fake.stats["requests"].get(CHAT, 0)
    return count


def marker(fault: str) -> dict[str, object]:
    return chat(f"[[fault:{fault}]] hello there world")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def health(clock: FakeClock) -> Health:
    return Health(failures=3, cooldown_s=30.0, clock=clock)


def test_opens_after_consecutive_failures(health: Health) -> None:
    for _ in range(2):
        health.failure("m")
        assert health.state("m") == CLOSED and health.acquire("m")
    health.failure("m")
    assert health.state("m") == OPEN
    assert health.circuit_open("m")
    assert not health.acquire("m")
    assert health.state("other") == CLOSED and not health.circuit_open("other")


def test_a_success_resets_the_count(health: Health) -> None:
    health.failure("m")
    health.failure("m")
    health.success("m")
    health.failure("m")
    health.failure("m")
    assert health.state("m") == CLOSED


def test_half_open_after_cooldown_lets_one_probe_through(health: Health, clock: FakeClock) -> None:
    for _ in range(3):
        health.failure("m")
    clock.now += 29.9
    assert health.state("m") == OPEN
    clock.now += 0.1
    assert health.state("m") == HALF_OPEN
    assert not health.circuit_open("m")
    assert health.acquire("m")  # the probe
    assert health.state("m") == OPEN  # while it is out, nothing else goes
    assert not health.acquire("m")


def test_a_good_probe_closes(health: Health, clock: FakeClock) -> None:
    for _ in range(3):
        health.failure("m")
    clock.now += 30
    assert health.acquire("m")
    health.success("m")
    assert health.state("m") == CLOSED
    health.failure("m")
    assert health.state("m") == CLOSED, "the failure count started again from zero"


def test_a_bad_probe_reopens_for_a_full_cooldown(health: Health, clock: FakeClock) -> None:
    for _ in range(3):
        health.failure("m")
    clock.now += 30
    assert health.acquire("m")
    health.failure("m")  # one failure is enough while probing
    assert health.state("m") == OPEN
    clock.now += 29.9
    assert health.state("m") == OPEN
    clock.now += 0.1
    assert health.state("m") == HALF_OPEN


def test_more_failures_while_open_do_not_extend_the_cooldown(
    health: Health, clock: FakeClock
) -> None:
    for _ in range(3):
        health.failure("m")
    clock.now += 20
    health.failure("m")  # e.g. a request that was already in flight
    clock.now += 10
    assert health.state("m") == HALF_OPEN


def test_success_on_an_unknown_model_is_harmless(health: Health) -> None:
    health.success("never-seen")
    assert health.state("never-seen") == CLOSED


def test_output_average_is_an_ewma(clock: FakeClock) -> None:
    health = Health(clock=clock, ewma_alpha=0.5)
    assert health.avg_output_tokens("auto", "m") is None
    health.observe_output("auto", "m", 100)
    assert health.avg_output_tokens("auto", "m") == 100
    health.observe_output("auto", "m", 200)
    assert health.avg_output_tokens("auto", "m") == 150
    health.observe_output("auto", "m", 50)
    assert health.avg_output_tokens("auto", "m") == 100
    assert health.avg_output_tokens("other", "m") is None


# -- circuit breaker -------------------------------------------------------------------------


def circuit(gw: Gateway, model: str) -> float:
    return gw.scrape()[("effgate_circuit_state", frozenset({("upstream", model)}))]


def test_circuit_opens_after_repeated_failures(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
) -> None:
    gw = make_gateway(policy(small={"max_retries": 0}), circuit_failures=3)
    small.set_faults({"kind": "status", "status": 503, "count": 10})
    with gw.http() as c:
        for i in range(3):
            assert circuit(gw, "small") == 0, i
            r = c.post(CHAT, json=chat())
            assert r.status_code == 200 and r.headers["x-effgate-model"] == "big"
        assert circuit(gw, "small") == 2
        assert circuit(gw, "big") == 0
        r = c.post(CHAT, json=chat())  # small is skipped by the decision, not tried
        assert r.headers["x-effgate-model"] == "big"
    assert requests_to(small) == 3 and requests_to(big) == 4
    assert gw.metric("effgate_fallbacks_total") == 3
    rec = gw.records(at_least=4)[-1]
    small_row = [c for c in rec["decision"]["candidates"] if c["model"] == "small"]
    assert small_row[0]["reason"] == "circuit" and not small_row[0]["eligible"]


def test_circuit_half_opens_after_cooldown_and_a_good_probe_closes_it(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
) -> None:
    gw = make_gateway(policy(small={"max_retries": 0}), circuit_failures=1, circuit_cooldown_s=0.3)
    small.set_faults({"kind": "status", "status": 503, "count": 1})
    with gw.http() as c:
        assert c.post(CHAT, json=chat()).headers["x-effgate-model"] == "big"
        assert circuit(gw, "small") == 2
        wait_until(lambda: circuit(gw, "small") == 1, what="half-open")
        r = c.post(CHAT, json=chat())
    assert r.headers["x-effgate-model"] == "small"
    assert circuit(gw, "small") == 0


def test_a_failed_probe_reopens_the_circuit(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
) -> None:
    gw = make_gateway(policy(small={"max_retries": 0}), circuit_failures=1, circuit_cooldown_s=1.0)
    small.set_faults({"kind": "status", "status": 503, "count": 2})
    with gw.http() as c:
        c.post(CHAT, json=chat())
        wait_until(lambda: circuit(gw, "small") == 1, what="half-open")
        assert c.post(CHAT, json=chat()).headers["x-effgate-model"] == "big"
        assert circuit(gw, "small") == 2  # open again, for another cooldown
        assert c.post(CHAT, json=chat()).headers["x-effgate-model"] == "big"
    assert requests_to(small) == 2


def test_a_probe_answered_with_4xx_does_not_wedge_the_circuit(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
) -> None:
    gw = make_gateway(policy(small={"max_retries": 0}), circuit_failures=1, circuit_cooldown_s=0.2)
    small.set_faults({"kind": "status", "status": 503, "count": 1})
    with gw.http() as c:
        c.post(CHAT, json=chat())
        wait_until(lambda: circuit(gw, "small") == 1, what="half-open")
        # the probe reaches small, which answers (so it is up) with a client error
        assert c.post(CHAT, json=marker("status=400")).status_code == 400
        time.sleep(0.3)  # longer than the cooldown
        r = c.post(CHAT, json=chat(model="small"))
    assert r.status_code == 200, r.text


def test_a_probe_cancelled_by_the_client_does_not_wedge_the_circuit(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
) -> None:
    gw = make_gateway(policy(small={"max_retries": 0}), circuit_failures=1, circuit_cooldown_s=0.2)
    small.set_faults({"kind": "status", "status": 503, "count": 1})
    with gw.http() as c:
        c.post(CHAT, json=chat())
        wait_until(lambda: circuit(gw, "small") == 1, what="half-open")
    with (
        httpx.Client(base_url=gw.base_url, timeout=0.3) as impatient,
        pytest.raises(httpx.ReadTimeout),
    ):
        impatient.post(CHAT, json=marker("slow_first_byte=3000"))  # the probe
    wait_until(lambda: small.stats["disconnects"] == 1, what="the probe was closed")
    time.sleep(0.3)  # longer than the cooldown
    with gw.http() as c:
        r = c.post(CHAT, json=chat(model="small"))
    assert r.status_code == 200, r.text


def test_retries_stop_once_the_circuit_opens(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
) -> None:
    gw = make_gateway(policy(small={"max_retries": 3}), circuit_failures=1)
    small.set_faults({"kind": "status", "status": 503, "count": 10})
    with gw.http() as c:
        r = c.post(CHAT, json=chat())
    assert r.headers["x-effgate-model"] == "big"
    assert requests_to(small) == 1, "no retry into an open circuit"


def test_only_the_probe_s_holder_releases_it(health: Health, clock: FakeClock) -> None:
    # a request let through while the circuit was closed ends with no verdict after the
    # circuit opened and another request took the half-open probe: the probe stays taken
    earlier = health.acquire("m")
    assert earlier == PASS
    for _ in range(3):
        health.failure("m")
    clock.now += 30
    probe = health.acquire("m")
    assert probe == PROBE
    health.release("m", earlier)
    assert health.acquire("m") == REFUSED, "a second probe while the first is out"
    health.release("m", probe)  # the probe's holder gave up: the next request probes
    assert health.acquire("m") == PROBE
