"""Live per-model state the routing decision reads: circuit breakers and output-length averages.

Implements ``policies.engine.LiveStats``. A circuit opens after ``failures`` consecutive failures
and stays open for ``cooldown_s``; then it is half-open and lets one probe through, which closes
it on success or re-opens it on failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

CircuitState = Literal[0, 1, 2]  # closed, half-open, open
CLOSED: CircuitState = 0
HALF_OPEN: CircuitState = 1
OPEN: CircuitState = 2
Grant = Literal[0, 1, 2]  # what acquire gave: nothing, a pass (closed), the half-open probe
REFUSED: Grant = 0
PASS: Grant = 1
PROBE: Grant = 2


@dataclass(slots=True)
class _Circuit:
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False


class Health:
    """Circuit breakers per upstream and EWMA output tokens per (route, model)."""

    def __init__(
        self,
        *,
        failures: int = 5,
        cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        ewma_alpha: float = 0.1,
    ) -> None:
        self._threshold = failures
        self._cooldown = cooldown_s
        self._clock = clock
        self._alpha = ewma_alpha
        self._circuits: dict[str, _Circuit] = {}
        self._avg_out: dict[tuple[str, str], float] = {}

    # LiveStats
    def circuit_open(self, model: str) -> bool:
        return self.state(model) == OPEN

    def avg_output_tokens(self, route: str, model: str) -> float | None:
        return self._avg_out.get((route, model))

    def state(self, model: str) -> CircuitState:
        c = self._circuits.get(model)
        if c is None or c.opened_at is None:
            return CLOSED
        if self._clock() - c.opened_at < self._cooldown:
            return OPEN
        return OPEN if c.probing else HALF_OPEN

    def acquire(self, model: str) -> Grant:
        """May a request go to ``model`` now (falsy: no)? In half-open state only one probe
        may: ``PROBE`` marks the request that holds it."""
        st = self.state(model)
        if st == CLOSED:
            return PASS
        if st == OPEN:
            return REFUSED
        self._circuits[model].probing = True
        return PROBE

    def success(self, model: str) -> None:
        c = self._circuits.get(model)
        if c is None:
            return
        c.failures, c.opened_at, c.probing = 0, None, False

    def release(self, model: str, grant: Grant = PROBE) -> None:
        """A call ended with no verdict (the client left, or it never started): the probe it
        held lets the next request probe. A pass given while the circuit was closed holds
        none, so it leaves another request's probe alone."""
        c = self._circuits.get(model)
        if c is not None and grant == PROBE:
            c.probing = False

    def failure(self, model: str) -> None:
        c = self._circuits.setdefault(model, _Circuit())
        c.failures += 1
        if c.probing or (c.opened_at is None and c.failures >= self._threshold):
            c.opened_at, c.probing = self._clock(), False

    def observe_output(self, route: str, model: str, tokens: int) -> None:
        key = (route, model)
        prev = self._avg_out.get(key)
        self._avg_out[key] = tokens if prev is None else prev + self._alpha * (tokens - prev)
