"""Circuit breakers and output-length averages, on an injected clock."""

from __future__ import annotations

import pytest

from gateway.health import CLOSED, HALF_OPEN, OPEN, Health


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def health(clock: Clock) -> Health:
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


def test_half_open_after_cooldown_lets_one_probe_through(health: Health, clock: Clock) -> None:
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


def test_a_good_probe_closes(health: Health, clock: Clock) -> None:
    for _ in range(3):
        health.failure("m")
    clock.now += 30
    assert health.acquire("m")
    health.success("m")
    assert health.state("m") == CLOSED
    health.failure("m")
    assert health.state("m") == CLOSED, "the failure count started again from zero"


def test_a_bad_probe_reopens_for_a_full_cooldown(health: Health, clock: Clock) -> None:
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


def test_more_failures_while_open_do_not_extend_the_cooldown(health: Health, clock: Clock) -> None:
    for _ in range(3):
        health.failure("m")
    clock.now += 20
    health.failure("m")  # e.g. a request that was already in flight
    clock.now += 10
    assert health.state("m") == HALF_OPEN


def test_success_on_an_unknown_model_is_harmless(health: Health) -> None:
    health.success("never-seen")
    assert health.state("never-seen") == CLOSED


def test_output_average_is_an_ewma(clock: Clock) -> None:
    health = Health(clock=clock, ewma_alpha=0.5)
    assert health.avg_output_tokens("auto", "m") is None
    health.observe_output("auto", "m", 100)
    assert health.avg_output_tokens("auto", "m") == 100
    health.observe_output("auto", "m", 200)
    assert health.avg_output_tokens("auto", "m") == 150
    health.observe_output("auto", "m", 50)
    assert health.avg_output_tokens("auto", "m") == 100
    assert health.avg_output_tokens("other", "m") is None
