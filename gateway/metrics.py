"""Every Prometheus metric the gateway exports, defined once, on an injected registry.

Labels come only from closed sets: route and model ids declared in the live policy, status
classes, outcomes, reasons. Names and labels are the contract in docs/contracts.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
QUALITY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)
ESTIMATOR_BUCKETS = (5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01)


@dataclass(frozen=True, slots=True)
class PairMetrics:
    """The children of one (route, model) pair, looked up once instead of on every request."""

    ttft: Any
    predicted_quality: Any
    tokens_in: Any
    tokens_out: Any
    tokens_cached: Any
    tokens_reasoning: Any
    tokens_per_request: Any
    cost: Any
    baseline_cost: Any
    savings: Any


class Metrics:
    """The gateway's metric families."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.requests = Counter(
            "effgate_requests",
            "Requests to the /v1 endpoints, by endpoint, route, model, status class and outcome.",
            ["endpoint", "route", "model", "status_class", "outcome", "stream"],
            registry=r,
        )
        self.request_duration = Histogram(
            "effgate_request_duration_seconds",
            "Time from request to last byte sent.",
            ["endpoint", "route", "model", "stream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "effgate_time_to_first_token_seconds",
            "Time from request to the first streamed event.",
            ["route", "model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "effgate_upstream_duration_seconds",
            "Time spent waiting on the upstream.",
            ["upstream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "effgate_tokens",
            "Tokens by direction (input, output, cached, reasoning).",
            ["route", "model", "direction"],
            registry=r,
        )
        self.tokens_per_request = Histogram(
            "effgate_tokens_per_request",
            "Input plus output tokens of one request.",
            ["route", "model"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.cost = Counter(
            "effgate_cost_usd",
            "Spend in USD at the serving model's prices.",
            ["route", "model"],
            registry=r,
        )
        self.baseline_cost = Counter(
            "effgate_baseline_cost_usd",
            "What the same requests would cost on the reference model.",
            ["route", "model"],
            registry=r,
        )
        self.savings = Counter(
            "effgate_savings_usd",
            "Baseline cost minus cost (only positive savings are counted).",
            ["route", "model"],
            registry=r,
        )
        self.predicted_quality = Histogram(
            "effgate_predicted_quality",
            "Predicted probability of an acceptable answer.",
            ["route", "model"],
            buckets=QUALITY_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "effgate_routing_decisions",
            "Routing decisions by reason.",
            ["route", "model", "reason"],
            registry=r,
        )
        self.retries = Counter(
            "effgate_retries", "Retries of one upstream.", ["upstream"], registry=r
        )
        self.fallbacks = Counter(
            "effgate_fallbacks",
            "Fallbacks from one model to the next.",
            ["route", "from_model", "to_model"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "effgate_upstream_errors",
            "Upstream failures by kind.",
            ["upstream", "kind"],
            registry=r,
        )
        self.in_flight = Gauge("effgate_in_flight_requests", "Requests in progress.", registry=r)
        self.outcomes = Counter(
            "effgate_outcomes",
            "Feedback outcomes (first verdict per request).",
            ["route", "model", "outcome"],
            registry=r,
        )
        self.feedback_score = Histogram(
            "effgate_feedback_score",
            "Feedback scores.",
            ["route", "model"],
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=r,
        )
        self.estimator_duration = Histogram(
            "effgate_estimator_duration_seconds",
            "Difficulty estimation time.",
            buckets=ESTIMATOR_BUCKETS,
            registry=r,
        )
        self.policy_reloads = Counter(
            "effgate_policy_reloads", "Policy reloads by result.", ["result"], registry=r
        )
        self.policy_info = Gauge(
            "effgate_policy_info", "The live policy (value 1).", ["sha256", "version"], registry=r
        )
        self.budget = Gauge("effgate_budget_usd", "Configured budget.", ["period"], registry=r)
        self.records_dropped = Counter(
            "effgate_records_dropped",
            "Request records that could not be written.",
            ["sink"],
            registry=r,
        )
        self.store_fallbacks = Counter(
            "effgate_store_fallbacks",
            "Shared-store operations served by the in-process fallback (Redis down or slow).",
            ["op"],
            registry=r,
        )
        # series that only move on rare events start at 0, so dashboards show 0, not "No data"
        for result in ("ok", "error"):
            self.policy_reloads.labels(result)
        for sink in ("buffer", "file", "redis"):
            self.records_dropped.labels(sink)
        for op in ("put", "get", "hit"):
            self.store_fallbacks.labels(op)
        self._live_policy: tuple[str, str] | None = None
        self._pairs: dict[tuple[str, str], PairMetrics] = {}

    def pair(self, route: str, model: str) -> PairMetrics:
        """Children for ``(route, model)``; both come from the policy, so the cache is bounded."""
        key = (route, model)
        found = self._pairs.get(key)
        if found is None:
            tok = self.tokens
            found = PairMetrics(
                ttft=self.ttft.labels(route, model),
                predicted_quality=self.predicted_quality.labels(route, model),
                tokens_in=tok.labels(route, model, "input"),
                tokens_out=tok.labels(route, model, "output"),
                tokens_cached=tok.labels(route, model, "cached"),
                tokens_reasoning=tok.labels(route, model, "reasoning"),
                tokens_per_request=self.tokens_per_request.labels(route, model),
                cost=self.cost.labels(route, model),
                baseline_cost=self.baseline_cost.labels(route, model),
                savings=self.savings.labels(route, model),
            )
            self._pairs[key] = found
        return found

    def set_policy(self, sha256: str, version: int, daily_budget_usd: float | None) -> None:
        """Point ``effgate_policy_info`` at the live policy (one series) and export its budget."""
        key = (sha256[:12], str(version))
        if self._live_policy is not None and self._live_policy != key:
            self.policy_info.remove(*self._live_policy)
        self.policy_info.labels(*key).set(1)
        self._live_policy = key
        if daily_budget_usd is None:
            self.budget.clear()
        else:
            self.budget.labels("day").set(daily_budget_usd)


class CircuitCollector(Collector):
    """``effgate_circuit_state`` read on scrape, so a cooled-down circuit shows as half-open."""

    def __init__(self, state: Callable[[str], int], models: Callable[[], Iterable[str]]) -> None:
        self._state = state
        self._models = models

    def collect(self) -> Iterator[GaugeMetricFamily]:
        fam = GaugeMetricFamily(
            "effgate_circuit_state",
            "Circuit per upstream: 0 closed, 1 half-open, 2 open.",
            labels=["upstream"],
        )
        for model in self._models():
            fam.add_metric([model], float(self._state(model)))
        yield fam

    def describe(self) -> list[GaugeMetricFamily]:
        return []
