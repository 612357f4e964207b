"""A ``LiveStats`` whose answers the test sets: open circuits and mean output tokens."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


class FakeStats:
    def __init__(
        self,
        open_circuits: Iterable[str] = (),
        avg_output: Mapping[str, float] | None = None,
    ) -> None:
        self.open_circuits = frozenset(open_circuits)
        self.avg_output = dict(avg_output or {})
        self.asked: list[tuple[str, str]] = []

    def circuit_open(self, model: str) -> bool:
        return model in self.open_circuits

    def avg_output_tokens(self, route: str, model: str) -> float | None:
        self.asked.append((route, model))
        return self.avg_output.get(model)
