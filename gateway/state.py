"""AppState: every resource the lifespan builds and closes, in one place (no module globals)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.accountant import Accountant
from gateway.budgets import Ledger
from gateway.health import Health
from gateway.kv import KV
from gateway.metrics import Metrics
from gateway.records import RecordLog
from gateway.scoring import EstimatorStore
from gateway.settings import Settings
from gateway.shadow import Evaluator
from gateway.tenants import Tenant, TenantStore
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
    ledger: Ledger
    tenants: TenantStore | None  # EFFGATE_TENANTS_PATH
    plain_keys: dict[str, Tenant]  # EFFGATE_API_KEYS by digest
    default_tenant: Tenant  # the caller when no keys are configured
    ready: bool = False
    draining: bool = False  # SIGTERM with EFFGATE_SHUTDOWN_DELAY_S: /readyz answers 503

    def reload_all(self) -> dict[str, bool]:
        """Re-read the policy, the tenants file and the estimator artifact (SIGHUP, admin
        reload); each keeps its running version when the new one fails to load."""
        out = {"policy": self.policies.reload(), "estimator": self.estimator.reload()}
        if self.tenants is not None:
            out["tenants"] = self.tenants.reload()
        return out
