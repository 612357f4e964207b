"""AppState: every resource the lifespan builds and closes, in one place (no module globals)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.accountant import Accountant
from gateway.health import Health
from gateway.kv import KV
from gateway.metrics import Metrics
from gateway.records import RecordLog
from gateway.settings import Settings
from gateway.tokens import TokenCounter
from gateway.upstreams.pool import UpstreamPool
from policies.store import PolicyStore


class DifficultyEstimator(Protocol):
    def difficulty(self, messages: list[object]) -> float: ...


@dataclass(slots=True)
class AppState:
    settings: Settings
    policies: PolicyStore
    estimator: DifficultyEstimator
    upstreams: UpstreamPool
    health: Health
    metrics: Metrics
    kv: KV
    records: RecordLog
    accountant: Accountant
    tokens: TokenCounter
    ready: bool = False
