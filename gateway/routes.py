"""Thin HTTP handlers: each /v1 handler hands its request to ``lifecycle.serve`` with the
endpoint it is; health, readiness and metrics answer directly. Errors are raised, never
rendered here.
"""

from __future__ import annotations

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import pipeline
from gateway.errors import JSON
from gateway.lifecycle import Spec, serve
from gateway.state import AppState

CHAT = Spec("chat", pipeline.chat, calls_out=True)
EMBEDDINGS = Spec("embeddings", pipeline.embeddings, calls_out=True)
EXPLAIN = Spec("explain", pipeline.explain)
# feedback never spends the rate limit: rating an answer is not another request for one
FEEDBACK = Spec("feedback", pipeline.feedback, body_limit=64 * 1024, rate_limited=False)
MODELS = Spec("models", pipeline.list_models, reads_body=False)
MODEL = Spec("models", pipeline.get_model, reads_body=False)


async def chat_completions(request: Request) -> Response:
    return await serve(request, CHAT)


async def embeddings(request: Request) -> Response:
    return await serve(request, EMBEDDINGS)


async def route_explain(request: Request) -> Response:
    return await serve(request, EXPLAIN)


async def feedback(request: Request) -> Response:
    return await serve(request, FEEDBACK)


async def list_models(request: Request) -> Response:
    return await serve(request, MODELS)


async def get_model(request: Request) -> Response:
    return await serve(request, MODEL)


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.effgate
    return state


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type=JSON)


async def readyz(request: Request) -> Response:
    state = _state(request)
    policy = state.policies.current
    body = {"status": "ready" if state.ready else "starting", "policy_sha256": policy.sha256}
    return Response(orjson.dumps(body), 200 if state.ready else 503, media_type=JSON)


async def metrics(request: Request) -> Response:
    data = generate_latest(_state(request).metrics.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)


# Plain Starlette routes: the handlers parse their own bodies, so FastAPI's per-request
# dependency solving (about 0.1 ms of CPU here) would buy nothing.
ROUTES = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/v1/route/explain", route_explain, methods=["POST"]),
    Route("/v1/feedback", feedback, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
