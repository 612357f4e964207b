"""Fault injection and request statistics for the fake upstream.

A fault is set through the admin API (``POST /_fake/faults``) or per request by a marker in
the last user message (or a completions prompt)::

    [[fault:status=503]]  [[fault:status=429,retry_after=2]]  [[fault:reset]]  [[fault:hang]]
    [[fault:cut=3]]  [[fault:slow_first_byte=3000]]  [[fault:stall=2,ms=5000]]

The value after ``=`` fills the kind's main field (``status``: status, ``cut`` and ``stall``:
after_chunks, ``slow_first_byte``: ms); further ``key=value`` pairs set other fields.
Both paths build the same frozen `Fault`. Both classes here are shared between the server's
event loop thread and test threads, so they guard their state with a lock.
"""

from __future__ import annotations

import re
import threading
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast, get_args

FaultKind = Literal["status", "hang", "reset", "cut", "slow_first_byte", "stall"]
FAULT_KINDS: frozenset[str] = frozenset(get_args(FaultKind))

_MAIN_FIELD: dict[str, str] = {
    "status": "status",
    "cut": "after_chunks",
    "stall": "after_chunks",
    "slow_first_byte": "ms",
}
_INT_FIELDS = ("status", "count", "after_chunks")
_FLOAT_FIELDS = ("ms", "retry_after")
MARKER = re.compile(r"\[\[fault:([a-z_]+)(?:=([^\]]*))?\]\]")
RECENT_LIMIT = 50


class FaultError(ValueError):
    """A fault description that cannot be applied (unknown kind, bad field)."""


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected failure. `count` is how many requests the admin queue applies it to."""

    kind: FaultKind
    status: int = 503
    retry_after: float | None = None
    after_chunks: int = 1
    ms: float = 1000.0
    count: int = 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_fault(spec: Mapping[str, Any]) -> Fault:
    """Validate one JSON fault description, e.g. ``{"kind": "status", "status": 429}``."""
    kind = spec.get("kind")
    if kind not in FAULT_KINDS:
        raise FaultError(f"unknown fault kind {kind!r}; expected one of {sorted(FAULT_KINDS)}")
    fields: dict[str, Any] = {}
    for name in _INT_FIELDS:
        if spec.get(name) is not None:
            fields[name] = _number(spec, name, int)
    for name in _FLOAT_FIELDS:
        if spec.get(name) is not None:
            fields[name] = _number(spec, name, float)
    unknown = set(spec) - {"kind", *_INT_FIELDS, *_FLOAT_FIELDS}
    if unknown:
        raise FaultError(f"unknown fault field(s) {sorted(unknown)}")
    fault = Fault(kind=cast(FaultKind, kind), **fields)
    if not 100 <= fault.status <= 599:
        raise FaultError(f"status must be an HTTP status, got {fault.status}")
    if fault.count < 1 or fault.after_chunks < 0 or fault.ms < 0:
        raise FaultError("count must be >= 1, after_chunks and ms >= 0")
    return fault


def _number(spec: Mapping[str, Any], name: str, kind: type[int] | type[float]) -> int | float:
    value = spec[name]
    if isinstance(value, bool):
        raise FaultError(f"{name} must be a number")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise FaultError(f"{name} must be a number, got {value!r}") from None


def parse_marker(text: str) -> Fault | None:
    """The fault named by the first ``[[fault:...]]`` marker in `text`, if any."""
    if "[[fault:" not in text:
        return None
    match = MARKER.search(text)
    if match is None:
        raise FaultError("malformed fault marker")
    kind, args = match.group(1), match.group(2)
    spec: dict[str, Any] = {"kind": kind}
    for i, part in enumerate(args.split(",") if args else ()):
        key, eq, value = part.strip().partition("=")
        if eq:
            spec[key] = value
        elif i == 0 and kind in _MAIN_FIELD:
            spec[_MAIN_FIELD[kind]] = key
        else:
            raise FaultError(f"cannot read fault marker argument {part!r}")
    return parse_fault(spec)


class FaultQueue:
    """Faults applied, in order, to the next model requests (each `count` times)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[list[Any]] = deque()  # [fault, remaining]

    def set(self, faults: Sequence[Fault]) -> None:
        with self._lock:
            self._queue = deque([f, f.count] for f in faults)

    def clear(self) -> None:
        self.set(())

    def take(self) -> Fault | None:
        if not self._queue:  # NOTE: lock-free fast path for the common empty case.
            return None
        with self._lock:
            if not self._queue:
                return None
            head = self._queue[0]
            head[1] -= 1
            if head[1] <= 0:
                self._queue.popleft()
            return cast(Fault, head[0])

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{**f.to_json(), "count": left} for f, left in self._queue]


class Stats:
    """Request counts per path, disconnects, injected faults and the last requests seen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._paths: Counter[str] = Counter()
            self._faults: Counter[str] = Counter()
            self._disconnects = 0
            self._connections: set[int] = set()
            self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT_LIMIT)

    def request(
        self, method: str, path: str, headers: dict[str, str], body: Any, connection: int = 0
    ) -> None:
        with self._lock:
            self._paths[path] += 1
            if path.startswith("/v1/") and len(self._connections) < RECENT_LIMIT:
                self._connections.add(connection)
            if path.startswith("/v1/"):
                self._recent.append(
                    {"method": method, "path": path, "headers": headers, "body": body}
                )

    def fault(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] += 1

    def disconnect(self) -> None:
        with self._lock:
            self._disconnects += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(self._paths),
                "requests_total": sum(self._paths.values()),
                "disconnects": self._disconnects,
                # distinct client connections that sent model requests: keep-alive reuse shows
                "connections": len(self._connections),
                "faults_injected": dict(self._faults),
                "recent": list(self._recent),
            }
