"""Every Prometheus metric the gateway exports, defined once, on an injected registry.

Labels come only from closed sets: route and model ids declared in the live policy, status
classes, outcomes, reasons. Names and labels are the contract in docs/contracts.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.series import CounterSeries, GaugeValue, HistogramSeries, SeriesCollector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
QUALITY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)
ESTIMATOR_BUCKETS = (5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01)


class Metrics:
    """The gateway's metric families.

    The series every request moves (requests, durations, tokens, cost, decisions) are
    ``gateway.series`` objects: lock-free, keyed by label tuples, exposed on scrape by one
    collector. The rest (retries, errors, reloads, feedback ...) are prometheus_client's own.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.requests = CounterSeries(
            "effgate_requests",
            "Requests to the /v1 endpoints, by endpoint, route, model, status class and outcome.",
            ["endpoint", "route", "model", "status_class", "outcome", "stream"],
        )
        self.request_duration = HistogramSeries(
            "effgate_request_duration_seconds",
            "Time from request to last byte sent.",
            ["endpoint", "route", "model", "stream"],
            LATENCY_BUCKETS,
        )
        self.ttft = HistogramSeries(
            "effgate_time_to_first_token_seconds",
            "Time from request to the first streamed event.",
            ["route", "model"],
            TTFT_BUCKETS,
        )
        self.upstream_duration = HistogramSeries(
            "effgate_upstream_duration_seconds",
            "Time spent waiting on the upstream.",
            ["upstream"],
            LATENCY_BUCKETS,
        )
        self.tokens = CounterSeries(
            "effgate_tokens",
            "Tokens by direction (input, output, cached, reasoning).",
            ["route", "model", "direction"],
        )
        self.tokens_per_request = HistogramSeries(
            "effgate_tokens_per_request",
            "Input plus output tokens of one request.",
            ["route", "model"],
            TOKEN_BUCKETS,
        )
        self.cost = CounterSeries(
            "effgate_cost_usd", "Spend in USD at the serving model's prices.", ["route", "model"]
        )
        self.baseline_cost = CounterSeries(
            "effgate_baseline_cost_usd",
            "What the same requests would cost on the reference model.",
            ["route", "model"],
        )
        self.savings = CounterSeries(
            "effgate_savings_usd",
            "Baseline cost minus cost (only positive savings are counted).",
            ["route", "model"],
        )
        self.predicted_quality = HistogramSeries(
            "effgate_predicted_quality",
            "Predicted probability of an acceptable answer.",
            ["route", "model"],
            QUALITY_BUCKETS,
        )
        self.decisions = CounterSeries(
            "effgate_routing_decisions",
            "Routing decisions by reason.",
            ["route", "model", "reason"],
        )
        self.calibration_predicted = CounterSeries(
            "effgate_calibration_predicted",
            "Sum of the predicted P(acceptable) of requests whose outcome was observed, by "
            "route, model and label source (feedback, judge).",
            ["route", "model", "source"],
        )
        self.calibration_observed = CounterSeries(
            "effgate_calibration_observed",
            "Sum of the observed outcomes (score, or accepted = 1) of the same requests.",
            ["route", "model", "source"],
        )
        self.calibration_outcomes = CounterSeries(
            "effgate_calibration_outcomes",
            "Requests with both a predicted P and an observed outcome.",
            ["route", "model", "source"],
        )
        self.estimator_duration = HistogramSeries(
            "effgate_estimator_duration_seconds",
            "Difficulty estimation time.",
            [],
            ESTIMATOR_BUCKETS,
        )
        self.in_flight = GaugeValue("effgate_in_flight_requests", "Requests in progress.")
        # per tenant: label values are the configured tenants' names up to a cap, then "other"
        self.tenant_cost = CounterSeries(
            "effgate_tenant_cost_usd", "Served cost per tenant (USD).", ["tenant"]
        )
        self.tenant_requests = CounterSeries(
            "effgate_tenant_requests", "Requests per tenant, by outcome.", ["tenant", "outcome"]
        )
        self.budget_pressure = CounterSeries(
            "effgate_budget_pressure",
            "Requests routed under a tenant's on_budget_pressure bar.",
            ["tenant"],
        )
        self.max_tenants = 100
        self._tenant_labels: set[str] = set()
        r.register(
            SeriesCollector(
                [
                    self.requests,
                    self.request_duration,
                    self.ttft,
                    self.upstream_duration,
                    self.tokens,
                    self.tokens_per_request,
                    self.cost,
                    self.baseline_cost,
                    self.savings,
                    self.predicted_quality,
                    self.decisions,
                    self.calibration_predicted,
                    self.tenant_cost,
                    self.tenant_requests,
                    self.budget_pressure,
                    self.calibration_observed,
                    self.calibration_outcomes,
                    self.estimator_duration,
                    self.in_flight,
                ]
            )
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
        self.evaluations = Counter(
            "effgate_evaluations",
            "Shadow evaluations by result (ok, budget, dropped, shadow_error, judge_error, "
            "unparseable, no_answer).",
            ["route", "result"],
            registry=r,
        )
        self.evaluation_cost = Counter(
            "effgate_evaluation_cost_usd",
            "Spend on shadow evaluation (shadow answers and the judge), never part of "
            "effgate_cost_usd or the savings.",
            ["route", "model", "role"],
            registry=r,
        )
        self.policy_reloads = Counter(
            "effgate_policy_reloads", "Policy reloads by result.", ["result"], registry=r
        )
        self.policy_info = Gauge(
            "effgate_policy_info", "The live policy (value 1).", ["sha256", "version"], registry=r
        )
        self.budget = Gauge("effgate_budget_usd", "Configured budget.", ["period"], registry=r)
        self.estimator_reloads = Counter(
            "effgate_estimator_reloads",
            "Estimator artifact reloads by result.",
            ["result"],
            registry=r,
        )
        self.estimator_info = Gauge(
            "effgate_estimator_info",
            "The live estimator artifact (value 1); learned: whether it has per-model heads.",
            ["sha256", "learned"],
            registry=r,
        )
        self.records_dropped = Counter(
            "effgate_records_dropped",
            "Request records that could not be written.",
            ["sink"],
            registry=r,
        )
        self.tenants_reloads = Counter(
            "effgate_tenants_reloads", "Tenants file reloads by result.", ["result"], registry=r
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
            self.estimator_reloads.labels(result)
            self.tenants_reloads.labels(result)
        for sink in ("buffer", "file", "redis"):
            self.records_dropped.labels(sink)
        for op in ("put", "get", "hit", "add"):
            self.store_fallbacks.labels(op)
        self._live_policy: tuple[str, str] | None = None
        self._live_estimator: tuple[str, str] | None = None

    def tenant_label(self, name: str) -> str:
        """``name`` as a label value: the first ``max_tenants`` names seen, then "other"."""
        labels = self._tenant_labels
        if name in labels:
            return name
        if len(labels) < self.max_tenants:
            labels.add(name)
            return name
        return "other"

    def observe_outcome(
        self, route: str, model: str, source: str, predicted: float, observed: float
    ) -> None:
        """One outcome beside its prediction: the calibration gap is
        (predicted - observed) / outcomes over any window (docs/operations.md)."""
        key = (route, model, source)
        self.calibration_predicted.inc(key, predicted)
        self.calibration_observed.inc(key, observed)
        self.calibration_outcomes.inc(key)

    def set_estimator(self, sha256: str, learned: bool) -> None:
        """Point ``effgate_estimator_info`` at the live artifact (one series)."""
        key = (sha256[:12], "true" if learned else "false")
        if self._live_estimator is not None and self._live_estimator != key:
            self.estimator_info.remove(*self._live_estimator)
        self.estimator_info.labels(*key).set(1)
        self._live_estimator = key

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


class LimitsCollector(Collector):
    """Budgets and rate limits, read on scrape from the ledger and the live tenants."""

    def __init__(
        self,
        counters: Callable[[], Any],
        degraded: Callable[[], bool],
        budgets: Callable[[], Iterable[tuple[str, str, float]]],
        label: Callable[[str], str],
    ) -> None:
        self._counters = counters
        self._degraded = degraded
        self._budgets = budgets
        self._label = label

    def collect(self) -> Iterator[Metric]:
        c = self._counters()
        rejected = CounterMetricFamily(
            "effgate_limit_rejections",
            "Requests refused by a tenant's limit (usd_day, usd_month, rpm, tpm).",
            labels=["tenant", "limit"],
        )
        merged: dict[tuple[str, str], int] = {}
        for (tenant, kind), n in c.rejected.items():
            key = (self._label(tenant), kind)
            merged[key] = merged.get(key, 0) + n
        for key, n in merged.items():
            rejected.add_metric(key, n)
        yield rejected
        errors = CounterMetricFamily(
            "effgate_limits_store_errors",
            "Budget and limit operations Redis failed (reserve, settle, reconcile, read).",
            labels=["op"],
        )
        for op in ("reserve", "settle", "reconcile", "read"):
            errors.add_metric([op], c.store_errors.get(op, 0))
        yield errors
        yield CounterMetricFamily(
            "effgate_limits_reconciled_usd",
            "Spend counted on a replica while Redis was down, pushed to Redis when it returned.",
            value=c.reconciled_usd,
        )
        yield CounterMetricFamily(
            "effgate_limits_releases_expired",
            "Holds left to expire in Redis (the release queue was full during an outage).",
            value=c.released_expired,
        )
        yield GaugeMetricFamily(
            "effgate_limits_degraded",
            "1 while Redis is unreachable and this replica enforces limits on its own.",
            value=1.0 if self._degraded() else 0.0,
        )
        budget = GaugeMetricFamily(
            "effgate_tenant_budget_usd",
            "A tenant's configured budget.",
            labels=["tenant", "period"],
        )
        for tenant, period, usd in self._budgets():
            budget.add_metric([self._label(tenant), period], usd)
        yield budget

    def describe(self) -> list[Metric]:
        return []


class StoreCollector(Collector):
    """The bounded stores and buffers (gateway.kv.StoreStats), read on scrape: what each
    holds against its bound, what it evicted, buffered, replayed and dropped."""

    def __init__(self, stats: Callable[[], Iterable[Any]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stores = list(self._stats())
        gauges = (
            ("effgate_store_bytes", "Bytes held (estimated: keys, values, per-entry overhead).",
             "bytes"),
            ("effgate_store_max_bytes", "The store's bound in bytes (its setting).", "max_bytes"),
            ("effgate_store_entries", "Entries held.", "entries"),
        )  # fmt: skip
        for name, doc, attr in gauges:
            fam = GaugeMetricFamily(name, doc, labels=["store"])
            for s in stores:
                fam.add_metric([s.name], float(getattr(s, attr)))
            yield fam
        counters = (
            ("effgate_store_evictions", "Entries pushed out by the byte bound, oldest first.",
             "evicted"),
            ("effgate_store_buffered", "Writes held because Redis failed, to be replayed.",
             "buffered"),
            ("effgate_store_replayed", "Held writes that reached Redis once it was back.",
             "replayed"),
            ("effgate_store_dropped", "Writes lost because a bounded buffer was full.",
             "dropped"),
        )  # fmt: skip
        for name, doc, attr in counters:
            cfam = CounterMetricFamily(name, doc, labels=["store"])
            for s in stores:
                cfam.add_metric([s.name], float(getattr(s, attr)))
            yield cfam

    def describe(self) -> list[Metric]:
        return []
