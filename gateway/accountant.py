"""Turns a finished exchange into metrics, a request record and a feedback-joinable summary.

Everything here runs after the response is complete (or the client has gone); the record is
queued, not written, and the summary put is a scheduled task, so none of it delays a client.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import orjson

from gateway.exchange import RECORDED, Exchange
from gateway.explain import candidate_rows
from gateway.health import Health
from gateway.kv import KV
from gateway.metrics import Metrics
from gateway.records import RECORD_ESTIMATE, RecordLog, iso
from gateway.shadow import Evaluator, Job, answer_from_events
from router_models.irt import irt_p
from router_models.signature import Signature, signature, with_digest

_STATUS_CLASS = {200: "2xx", 400: "4xx", 499: "4xx"}


def _served_p(ex: Exchange) -> float | None:
    """The predicted P(acceptable) of the model that served (after fallbacks: its own)."""
    d = ex.decision
    if d is None or ex.model is None:
        return None
    if d.model == ex.model.id:
        return d.p
    return next((c.p for c in d.candidates if c.model == ex.model.id), None)


def _queued_size(ex: Exchange) -> int:
    """What a queued record keeps alive, estimated: the exchange and its decision, the parsed
    messages (about 4 characters a prompt token) and a shadow-sampled answer."""
    return RECORD_ESTIMATE + 6 * ex.prompt_tokens + len(ex.answer or "")


class Accountant:
    def __init__(
        self,
        *,
        metrics: Metrics,
        health: Health,
        kv: KV,
        records: RecordLog,
        ttl_s: int,
        evaluator: Evaluator | None = None,
        signatures: str = "routed",
    ) -> None:
        self.metrics = metrics
        self.health = health
        self.kv = kv
        self.records = records
        self.ttl_s = ttl_s
        self.evaluator = evaluator
        self.signatures = signatures

    def finish(self, ex: Exchange) -> None:
        m = self.metrics
        route, model = ex.route, ex.model_id
        latency = time.perf_counter() - ex.started
        stream = "true" if ex.stream else "false"
        status_class = _STATUS_CLASS.get(ex.status) or f"{ex.status // 100}xx"
        m.requests.inc((ex.endpoint, route, model, status_class, ex.outcome, stream))
        m.request_duration.observe((ex.endpoint, route, model, stream), latency)
        tenant = m.tenant_label(ex.tenant)
        m.tenant_requests.inc((tenant, ex.outcome))
        if ex.cost_usd:
            m.tenant_cost.inc((tenant,), ex.cost_usd)
        if ex.endpoint not in RECORDED:
            return
        # built by the record writer, after the response has gone; queued, the exchange
        # (with the request's messages) is what it holds on to
        self.records.emit(functools.partial(self.record, ex, latency), _queued_size(ex))
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
            # only what the feedback join reads (route, model, tenant, the served P); the
            # store copies it to an exact-size allocation (gateway.kv.exact)
            summary: dict[str, str | float] = {"route": route, "model": model, "tenant": ex.tenant}
            p = _served_p(ex)
            if p is not None:
                summary["p"] = p
            self.kv.put_later("req:" + ex.request_id, orjson.dumps(summary), self.ttl_s)
        if ex.shadow is not None and ex.outcome == "ok" and self.evaluator is not None:
            self._evaluate(ex, self.evaluator)

    def _evaluate(self, ex: Exchange, evaluator: Evaluator) -> None:
        """Hand a sampled, served request to shadow evaluation (it runs in the background)."""
        assert ex.shadow is not None and ex.model is not None and ex.body is not None
        d = ex.decision
        answer = ex.answer
        if answer is None and ex.answer_events is not None:
            answer = answer_from_events(ex.answer_events)
        predicted = {c.model: c.p for c in d.candidates if c.p is not None} if d else {}
        if ex.model.id not in predicted and (p := _served_p(ex)) is not None:
            predicted[ex.model.id] = p
        evaluator.submit(
            Job(
                request_id=ex.request_id,
                route=ex.route,
                served=ex.model,
                shadow=ex.shadow,
                body=ex.body,
                answer=answer or "",
                prompt_tokens=ex.prompt_tokens,
                predicted=predicted,
                size=len(answer or "") + 4 * ex.prompt_tokens + 1024,
            )
        )

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
            rows = candidate_rows(d)
            if d.difficulty is not None:
                # what the prior (the IRT link of each skill) said, beside what was used: the
                # report shows where a learned router disagrees with it
                for row in rows:
                    m = ex.policy.models.get(row["model"])
                    if m is not None and m.skill is not None:
                        row["p_prior"] = round(
                            irt_p(ex.policy.discrimination, m.skill, d.difficulty), 6
                        )
            rec["decision"] = {
                "reason": d.reason,
                "difficulty": d.difficulty,
                "p": d.p,
                "quality_bar": d.quality_bar,
                "rule": d.rule,
                "fallbacks": list(d.fallbacks),
                "candidates": rows,
            }
        if ex.prompt is not None:
            rec["prompt"] = ex.prompt
        if ex.messages is not None and self._wants_signature(ex):
            # what training needs without the text: hashed, not reversible (docs/contracts.md)
            try:
                # the scorer's signature where learned heads needed one, else the dense
                # features the prior's difficulty came from (None: no scorer ran)
                made = ex.signature
                sig = (
                    with_digest(made, ex.messages, ex.tools)
                    if isinstance(made, Signature)
                    else signature(ex.messages, ex.tools, dense=made)
                )
                rec["signature"] = sig.to_json()
            except Exception:  # a message shape the hashing does not know: no signature
                rec["signature"] = None
        return rec

    def _wants_signature(self, ex: Exchange) -> bool:
        """Whether this request's record carries its signature (``records_signatures``):
        chat only; "routed": a request the estimator scored or a shadow-evaluated one, the
        ones a learned router is trained for."""
        if self.signatures == "off" or ex.endpoint != "chat":
            return False
        if self.signatures == "all" or ex.shadow is not None:
            return True
        return ex.decision is not None and ex.decision.difficulty is not None

    async def feedback(
        self, request_id: str, accepted: bool | None, score: float | None, tenant: str
    ) -> dict[str, Any] | None:
        """Join feedback to a served request; None when the id is unknown, expired or not the
        caller's (a tenant may only rate its own requests). Raises ``KVUnavailable`` when
        Redis did not answer and this replica did not serve the request: unknown is not said
        of a request another replica may have served.

        The last verdict is what the records (and so the report) keep. Prometheus counters
        cannot be taken back, so the outcome counters count each request's first verdict once;
        repeating or changing feedback never counts the request again.
        """
        raw = await self.kv.get("req:" + request_id, strict=True)
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
            p = summary.get("p")
            if isinstance(p, int | float):
                observed = score if score is not None else (1.0 if accepted else 0.0)
                self.metrics.observe_outcome(route, model, "feedback", float(p), observed)
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
