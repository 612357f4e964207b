"""JSON bodies that describe the policy: ``/v1/models`` and ``/v1/route/explain``."""

from __future__ import annotations

from typing import Any

import orjson

from policies.compiled import CompiledPolicy
from policies.engine import Decision, RouteInput


def models_body(policy: CompiledPolicy) -> bytes:
    """Catalog models and route names, OpenAI ``list`` shaped, with an ``effgate`` extension."""
    data: list[dict[str, Any]] = []
    for m in policy.models.values():
        data.append(
            {
                "id": m.id,
                "object": "model",
                "created": 0,
                "owned_by": m.provider,
                "effgate": {
                    "kind": "model",
                    "upstream_model": m.upstream_model,
                    "context_window": m.context_window,
                    "input_usd_per_mtok": m.input_usd_per_mtok,
                    "output_usd_per_mtok": m.output_usd_per_mtok,
                    "skill": m.skill,
                    "capabilities": sorted(m.capabilities),
                },
            }
        )
    for r in policy.routes.values():
        data.append(
            {
                "id": r.name,
                "object": "model",
                "created": 0,
                "owned_by": "effgate",
                "effgate": {
                    "kind": "route",
                    "candidates": list(r.candidates),
                    "quality_bar": r.quality_bar,
                    "reference_model": r.reference_model,
                    "default": r.name == policy.default_route,
                },
            }
        )
    return orjson.dumps({"object": "list", "data": data})


def explain_body(policy: CompiledPolicy, inp: RouteInput, d: Decision) -> bytes:
    return orjson.dumps(
        {
            "object": "route.explanation",
            "requested": inp.model,
            "route": d.route,
            "policy_sha256": policy.sha256,
            "difficulty": d.difficulty,
            "quality_bar": d.quality_bar,
            "rule": d.rule,
            "reason": d.reason,
            "model": d.model,
            "p": d.p,
            "fallbacks": list(d.fallbacks),
            "reference_model": d.reference_model,
            "prompt_tokens": inp.prompt_tokens,
            "needs": sorted(inp.needs),
            "task": inp.task,
            "candidates": candidate_rows(d),
            # where each P came from: a learned head of the estimator, or the IRT prior
            "p_source": {
                c.model: ("learned" if inp.p is not None and c.model in inp.p else "prior")
                for c in d.candidates
                if c.p is not None
            },
        }
    )


def candidate_rows(d: Decision) -> list[dict[str, Any]]:
    """The decision table as plain rows (explain bodies and request records share it)."""
    return [
        {
            "model": c.model,
            "p": c.p,
            "expected_cost_usd": c.expected_cost_usd,
            "eligible": c.eligible,
            "reason": c.reason,
        }
        for c in d.candidates
    ]
