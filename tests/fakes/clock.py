"""A clock a test moves by hand: the ``clock=`` seam of Health, MemoryKV and friends."""

from __future__ import annotations


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
