"""Turns a finished exchange into metrics, a request record and a feedback-joinable summary.

Everything here runs after the response is complete (or the client has gone); the record is
queued, not written, and the summary put is a scheduled task, so none of it delays a client.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import orjson

from gateway.exchange import RECORDED, Exchange
from gateway.explain import candidate_rows
from gateway.health import Health
from gateway.kv import KV
from gateway.metrics import Metrics
from gateway.records import RecordLog


def iso(ts: float) -> str:
    """``2026-11-28T21:58:35.123Z``: UTC, milliseconds truncated (datetime's isoformat)."""
    sec = math.floor(ts)
    us = round((ts - sec) * 1_000_000)
    if us >= 1_000_000:
        sec, us = sec + 1, us - 1_000_000
    return f"{_second(sec)}.{us // 1000:03d}Z"


@functools.lru_cache(maxsize=4)
def _second(sec: int) -> str:
    """The date and time of one second: formatted once a second, not once a request."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))


_STATUS_CLASS = {200: "2xx", 400: "4xx", 499: "4xx"}


class Accountant:
    def __init__(
        self, *, metrics: Metrics, health: Health, kv: KV, records: RecordLog, ttl_s: int
    ) -> None:
        self.metrics = metrics
        self.health = health
        self.kv = kv
        self.records = records
        self.ttl_s = ttl_s

    def finish(self, ex: Exchange) -> None:
        m = self.metrics
        route, model = ex.route, ex.model_id
        latency = time.perf_counter() - ex.started
        stream = "true" if ex.stream else "false"
        status_class = _STATUS_CLASS.get(ex.status) or f"{ex.status // 100}xx"
        m.requests.inc((ex.endpoint, route, model, status_class, ex.outcome, stream))
        m.request_duration.observe((ex.endpoint, route, model, stream), latency)
        if ex.endpoint not in RECORDED:
            return
        # built by the record writer, after the response has gone
        self.records.emit(functools.partial(self.record, ex, latency))
        if ex.endpoint == "explain":
            return  # a decision shown, nothing served: no routing, token or cost metrics
        pair = (route, model)
        if ex.ttft_s is not None:
            m.ttft.observe(pair, ex.ttft_s)
        d = ex.decision
        if d is not None:
            m.decisions.inc((route, d.model, d.reason))
            if d.p is not None and ex.model is not None:
                m.predicted_quality.observe(pair, d.p)
        u = ex.usage
        if u is not None and ex.model is not None:
            tokens = m.tokens
            tokens.inc((route, model, "input"), u.input)
            tokens.inc((route, model, "output"), u.output)
            tokens.inc((route, model, "cached"), u.cached)
            tokens.inc((route, model, "reasoning"), u.reasoning)
            m.tokens_per_request.observe(pair, u.total)
            m.cost.inc(pair, ex.cost_usd)
            m.baseline_cost.inc(pair, ex.baseline_cost_usd)
            m.savings.inc(pair, max(0.0, ex.baseline_cost_usd - ex.cost_usd))
            if ex.outcome == "ok" and d is not None and d.route is not None:
                self.health.observe_output(d.route, model, u.output)
        if ex.model is not None:
            summary = orjson.dumps(
                {"route": route, "model": model, "time": iso(ex.wall_time), "tenant": ex.tenant}
            )
            self.kv.put_later("req:" + ex.request_id, summary, self.ttl_s)

    def record(self, ex: Exchange, latency_s: float) -> dict[str, Any]:
        d = ex.decision
        u = ex.usage
        rec: dict[str, Any] = {
            "type": "request",
            "id": ex.request_id,
            "endpoint": ex.endpoint,
            "time": iso(ex.wall_time),
            "tenant": ex.tenant,
            "route": d.route if d is not None else None,
            "model": ex.model.id if ex.model is not None else None,
            "upstream_model": ex.model.upstream_model if ex.model is not None else None,
            "provider": ex.model.provider if ex.model is not None else None,
            "stream": ex.stream,
            "task": ex.task,
            "status": ex.status,
            "outcome": ex.outcome,
            "error": ex.error,
            "decision": None,
            "attempts": ex.attempts,
            "fallback_from": ex.fallback_from,
            "tokens": None
            if u is None
            else {
                "input": u.input,
                "output": u.output,
                "cached": u.cached,
                "reasoning": u.reasoning,
                "estimated": u.estimated,
            },
            "cost_usd": ex.cost_usd,
            "baseline_cost_usd": ex.baseline_cost_usd,
            "reference_model": d.reference_model if d is not None else None,
            "latency_ms": round(latency_s * 1000, 3),
            "ttft_ms": None if ex.ttft_s is None else round(ex.ttft_s * 1000, 3),
            "upstream_ms": round(ex.upstream_s * 1000, 3),
        }
        if d is not None:
            rec["decision"] = {
                "reason": d.reason,
                "difficulty": d.difficulty,
                "p": d.p,
                "quality_bar": d.quality_bar,
                "rule": d.rule,
                "fallbacks": list(d.fallbacks),
                "candidates": candidate_rows(d),
            }
        if ex.prompt is not None:
            rec["prompt"] = ex.prompt
        return rec

    async def feedback(
        self, request_id: str, accepted: bool | None, score: float | None, tenant: str
    ) -> dict[str, Any] | None:
        """Join feedback to a served request; None when the id is unknown, expired or not the
        caller's (a tenant may only rate its own requests).

        The last verdict is what the records (and so the report) keep. Prometheus counters
        cannot be taken back, so the outcome counters count each request's first verdict once;
        repeating or changing feedback never counts the request again.
        """
        raw = await self.kv.get("req:" + request_id)
        if raw is None:
            return None
        summary = orjson.loads(raw)
        if summary.get("tenant", tenant) != tenant:
            return None  # another tenant's request: as unknown as one that never existed
        if accepted is None and score is not None:
            accepted = score >= 0.5
        # atomic: of two verdicts racing in, exactly one is the first and counts
        first = await self.kv.put_if_absent(
            "fb:" + request_id, orjson.dumps([accepted, score]), self.ttl_s
        )
        route, model = summary["route"], summary["model"]
        if first:
            outcome = "accepted" if accepted else "rejected"
            self.metrics.outcomes.labels(route, model, outcome).inc()
            if score is not None:
                self.metrics.feedback_score.labels(route, model).observe(score)
        self.records.emit(
            {
                "type": "feedback",
                "request_id": request_id,
                "time": iso(time.time()),
                "accepted": accepted,
                "score": score,
            }
        )
        return {
            "object": "feedback",
            "request_id": request_id,
            "accepted": accepted,
            "score": score,
            "route": route,
            "model": model,
            "first": first,
        }
