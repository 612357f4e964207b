"""AppState: every resource the lifespan builds and closes, in one place (no module globals)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.accountant import Accountant
from gateway.health import Health
from gateway.kv import KV
from gateway.metrics import Metrics
from gateway.records import RecordLog
from gateway.scoring import EstimatorStore
from gateway.settings import Settings
from gateway.shadow import Evaluator
from gateway.tokens import TokenCounter
from gateway.upstreams.pool import UpstreamPool
from policies.store import PolicyStore


@dataclass(slots=True)
class AppState:
    settings: Settings
    policies: PolicyStore
    estimator: EstimatorStore
    upstreams: UpstreamPool
    health: Health
    metrics: Metrics
    kv: KV
    records: RecordLog
    accountant: Accountant
    tokens: TokenCounter
    evaluator: Evaluator
    ready: bool = False
