"""The OpenAPI 3.1 document of the /v1 API, served at ``GET /openapi.json``.

Built once, when the module is imported (the edge imports it at start): request bodies are the
pydantic wire models' own JSON Schemas (``gateway.protocol``, validation mode), so the document
cannot drift from what the gateway accepts; responses are the OpenAI shapes the endpoints
send, and every error is the one OpenAI error body (``gateway.errors.error_body``). Every path
of ``gateway.routes.SPECS`` is documented (``MODEL_PREFIX`` as ``/v1/models/{model}``), and
importing this module fails if one is not. The edge sends the prebuilt bytes; nothing here
runs per request.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway.protocol import ChatCompletionRequest, EmbeddingRequest, FeedbackRequest
from gateway.routes import MODEL_PREFIX, SPECS

PATH = "/openapi.json"
REF = "#/components/schemas/"
_MODELS: tuple[type[BaseModel], ...] = (ChatCompletionRequest, EmbeddingRequest, FeedbackRequest)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}


def _list(item: str) -> dict[str, Any]:
    return _obj(
        ["object", "data"], object={"const": "list"}, data={"type": "array", "items": _ref(item)}
    )


_STR = {"type": "string"}
_NULLABLE_STR = {"type": ["string", "null"]}
_NUM_OR_NULL = {"type": ["number", "null"]}
_ANY_OBJ = {"type": "object"}

RESPONSE_SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": _obj(
        ["error"],
        error=_obj(
            ["message", "type", "param", "code"],
            message=_STR,
            type=_STR,
            param=_NULLABLE_STR,
            code=_NULLABLE_STR,
        ),
    ),
    "ChatCompletion": _obj(
        ["id", "object", "model", "choices"],
        id=_STR,
        object={"const": "chat.completion"},
        created={"type": "integer"},
        model=_STR,
        choices={"type": "array", "items": _ANY_OBJ},
        usage={"type": ["object", "null"]},
    ),
    "EmbeddingList": _obj(
        ["object", "data", "model"],
        object={"const": "list"},
        data={"type": "array", "items": _ANY_OBJ},
        model=_STR,
        usage={"type": ["object", "null"]},
    ),
    "Model": _obj(
        ["id", "object", "created", "owned_by"],
        id=_STR,
        object={"const": "model"},
        created={"type": "integer"},
        owned_by=_STR,
        effgate=_obj(["kind"], kind={"enum": ["model", "route"]}),
    ),
    "ModelList": _list("Model"),
    "RouteExplanation": _obj(
        ["object", "requested", "route", "model", "reason", "fallbacks", "candidates"],
        object={"const": "route.explanation"},
        requested=_STR,
        route=_NULLABLE_STR,
        policy_sha256=_STR,
        model=_STR,
        reason=_STR,
        difficulty=_NUM_OR_NULL,
        quality_bar=_NUM_OR_NULL,
        p=_NUM_OR_NULL,
        fallbacks={"type": "array", "items": _STR},
        candidates={"type": "array", "items": _ANY_OBJ},
    ),
    "Feedback": _obj(
        ["object", "request_id", "accepted", "score", "first"],
        object={"const": "feedback"},
        request_id=_STR,
        accepted={"type": ["boolean", "null"]},
        score=_NUM_OR_NULL,
        route=_NULLABLE_STR,
        model=_STR,
        first={"type": "boolean"},
    ),
    "Tenant": _obj(["object", "name"], object={"const": "tenant"}, name=_STR),
    "TenantList": _obj(
        ["object", "data"],
        object={"const": "list"},
        data={"type": "array", "items": _ref("Tenant")},
    ),
    "Reload": _obj(
        ["object", "reloaded"],
        object={"const": "reload"},
        reloaded={"type": "object", "additionalProperties": {"type": "boolean"}},
    ),
}

_ERRORS = {
    "400": "Invalid request: malformed JSON, a field of the wrong type, past an input limit",
    "401": "No API key, or an unknown one",
    "403": "The key may not use this route, model or endpoint",
    "404": "Unknown model or request id",
    "408": "The request body did not arrive in time",
    "413": "The body is larger than the limit",
    "429": "Rate limit or budget exceeded (Retry-After)",
    "500": "Internal error: a generic body naming the request id",
    "503": "No healthy upstream, limits store down, overloaded or shutting down",
}
_UPSTREAM_ERRORS = {
    "502": "An upstream failed (its own error passed through, with x-effgate-upstream)",
    "504": "An upstream timed out",
}
_HEADERS = [
    ("x-effgate-route", "A policy route to use instead of the one `model` names", _STR),
    ("x-effgate-quality-bar", "The route's quality bar for this request", {"type": "number"}),
    ("x-effgate-max-cost-usd", "Skip models expected to cost more", {"type": "number"}),
    ("x-effgate-task", "The task label rules match on (else metadata.task)", _STR),
]


def _operation(
    name: str,
    summary: str,
    ok: dict[str, Any],
    *,
    body: str | None = None,
    calls_out: bool = False,
    routing_headers: bool = False,
    path_param: bool = False,
) -> dict[str, Any]:
    errors = {**_ERRORS, **(_UPSTREAM_ERRORS if calls_out else {})}
    op: dict[str, Any] = {
        "operationId": name,
        "summary": summary,
        "responses": {
            "200": ok,
            **{code: {"$ref": f"#/components/responses/{code}"} for code in sorted(errors)},
        },
    }
    params = []
    if path_param:
        params.append(
            {"name": "model", "in": "path", "required": True, "schema": {**_STR, "minLength": 1}}
        )
    if routing_headers:
        params += [
            {"name": n, "in": "header", "required": False, "description": d, "schema": s}
            for n, d, s in _HEADERS
        ]
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    return op


def _chat_ok() -> dict[str, Any]:
    ok = _json(_ref("ChatCompletion"), "The completion; with `stream: true`, an SSE stream")
    ok["content"]["text/event-stream"] = {"schema": _STR}
    return ok


def _operations() -> dict[str, tuple[str, dict[str, Any]]]:
    """Each SPECS path -> (the documented path, its operation)."""
    return {
        "/v1/chat/completions": (
            "/v1/chat/completions",
            _operation(
                "createChatCompletion",
                "Route and forward a chat completion (JSON, or SSE with stream: true)",
                _chat_ok(),
                body="ChatCompletionRequest",
                calls_out=True,
                routing_headers=True,
            ),
        ),
        "/v1/embeddings": (
            "/v1/embeddings",
            _operation(
                "createEmbedding",
                "Forward an embeddings request to the catalog model it names",
                _json(_ref("EmbeddingList"), "The embeddings"),
                body="EmbeddingRequest",
                calls_out=True,
            ),
        ),
        "/v1/route/explain": (
            "/v1/route/explain",
            _operation(
                "explainRoute",
                "The routing decision a chat request would get, without calling a model",
                _json(_ref("RouteExplanation"), "The decision"),
                body="ChatCompletionRequest",
                routing_headers=True,
            ),
        ),
        "/v1/feedback": (
            "/v1/feedback",
            _operation(
                "createFeedback",
                "Rate an earlier request's answer (accepted, a score in [0, 1], or both)",
                _json(_ref("Feedback"), "The feedback, joined to the request"),
                body="FeedbackRequest",
            ),
        ),
        "/v1/tenants/me": (
            "/v1/tenants/me",
            _operation(
                "getTenant",
                "The caller's tenant: configuration, spend and what remains",
                _json(_ref("Tenant"), "The tenant"),
            ),
        ),
        "/v1/admin/tenants": (
            "/v1/admin/tenants",
            _operation(
                "listTenants",
                "Every tenant's configuration and usage (admin keys only)",
                _json(_ref("TenantList"), "The tenants"),
            ),
        ),
        "/v1/admin/reload": (
            "/v1/admin/reload",
            _operation(
                "reload",
                "Re-read the policy, tenants file and estimator now (admin keys only)",
                _json(_ref("Reload"), "What reloaded"),
            ),
        ),
        "/v1/models": (
            "/v1/models",
            _operation(
                "listModels",
                "Catalog models and routes",
                _json(_ref("ModelList"), "The models and routes"),
            ),
        ),
        MODEL_PREFIX: (
            MODEL_PREFIX + "{model}",
            _operation(
                "retrieveModel",
                "One catalog model or route",
                _json(_ref("Model"), "The model"),
                path_param=True,
            ),
        ),
    }


def build() -> dict[str, Any]:
    """The document, as a dict; a SPECS path without an operation here is an error."""
    operations = _operations()
    missing = set(SPECS) - set(operations)
    if missing:
        raise RuntimeError(f"gateway.openapi documents no operation for {sorted(missing)}")
    _, defs = models_json_schema([(m, "validation") for m in _MODELS], ref_template=REF + "{model}")
    paths: dict[str, dict[str, Any]] = {}
    for route, spec in SPECS.items():
        path, op = operations[route]
        paths.setdefault(path, {})[spec.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "effgate",
            "version": "1",
            "description": "OpenAI-compatible gateway: routes each request to the cheapest"
            " model predicted to clear its quality bar.",
        },
        "paths": paths,
        "components": {
            "schemas": {**defs["$defs"], **RESPONSE_SCHEMAS},
            "responses": {
                code: _json(_ref("Error"), text)
                for code, text in sorted({**_ERRORS, **_UPSTREAM_ERRORS}.items())
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        # no key configured (no EFFGATE_API_KEYS, no tenants file): no auth needed
        "security": [{"bearer": []}, {}],
    }


DOCUMENT: bytes = orjson.dumps(build())
