"""One request's running account: what was decided, what was tried, what came back.

The pipeline fills it in as the request goes; ``Accountant.finish`` turns it into metrics, a
request record and the summary that feedback joins later.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.accounting import Usage, cost_usd
from gateway.errors import Outcome
from gateway.tenants import DEFAULT_TENANT, Tenant
from policies.compiled import CompiledPolicy, ModelEntry, ShadowEntry
from policies.engine import Decision

# the /v1 endpoints, as the ``endpoint`` label and record field name them
Endpoint = Literal["chat", "embeddings", "explain", "feedback", "models", "tenants", "admin"]
# endpoints whose requests are written to the request log (feedback writes its own record)
RECORDED: frozenset[Endpoint] = frozenset({"chat", "embeddings", "explain"})
DIRECT_ROUTE = "direct"  # the route label of requests that named a catalog model


@dataclass(slots=True)
class Exchange:
    request_id: str
    endpoint: Endpoint
    policy: CompiledPolicy
    tenant: str = "default"
    principal: Tenant = DEFAULT_TENANT  # the caller's tenant, its bounds and limits
    holds: tuple[Any, ...] = ()  # meters.Hold: what the request reserved, settled by finish
    # response headers the pipeline adds (budget pressure), merged into the reply's
    notes: dict[str, str] | None = None
    stream: bool = False
    started: float = field(default_factory=time.perf_counter)
    wall_time: float = field(default_factory=time.time)
    task: str | None = None
    prompt: str | None = None
    prompt_tokens: int = 0
    decision: Decision | None = None
    model: ModelEntry | None = None
    attempts: int = 0
    fallback_from: list[str] = field(default_factory=list)
    upstream_s: float = 0.0
    ttft_s: float | None = None
    status: int = 200
    outcome: Outcome = "ok"
    error: str | None = None
    usage: Usage | None = None
    cost_usd: float = 0.0
    baseline_cost_usd: float = 0.0
    # the request's messages (for the record's signature) and, when shadow evaluation
    # sampled this request, what the evaluation needs: the body and the served answer
    messages: list[Any] | None = None
    tools: list[Any] | None = None
    # the scorer's (router_models Signature, no digest) if it made one, else the dense
    # features of the prior's difficulty (an array), or None: the record reuses them
    signature: Any = None
    shadow: ShadowEntry | None = None
    body: dict[str, Any] | None = None
    answer: str | None = None
    answer_events: list[bytes] | None = None

    @property
    def route(self) -> str:
        """The route label: a policy route, ``direct`` for a named catalog model, else ``none``."""
        d = self.decision
        if d is not None and d.route is not None:
            return d.route
        return DIRECT_ROUTE if self.model is not None else "none"

    @property
    def model_id(self) -> str:
        return self.model.id if self.model is not None else "none"

    def price(self, usage: Usage) -> None:
        """Set the cost and the baseline cost (the route's reference model) from ``usage``."""
        self.usage = usage
        if self.model is None:
            return
        self.cost_usd = cost_usd(self.model, usage)
        ref_id = self.decision.reference_model if self.decision is not None else None
        ref = self.policy.models.get(ref_id) if ref_id else None
        self.baseline_cost_usd = cost_usd(ref, usage) if ref is not None else self.cost_usd
