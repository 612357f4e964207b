"""``GET /openapi.json``: a valid OpenAPI 3.1 document of every /v1 route, built from the
wire models, served as prebuilt bytes (tests/gateway/test_fuzz_bodies.py runs schemathesis
on it)."""

from __future__ import annotations

import orjson
from openapi_spec_validator import validate

from gateway import openapi
from gateway.protocol import ChatCompletionRequest, EmbeddingRequest, FeedbackRequest
from gateway.routes import MODEL_PREFIX, SPECS
from tests.gateway.conftest import Gateway

DOC = orjson.loads(openapi.DOCUMENT)


def test_the_document_is_valid_openapi() -> None:
    validate(DOC)
    assert DOC["openapi"].startswith("3.1")


def test_every_route_is_documented_with_its_method() -> None:
    for path, spec in SPECS.items():
        documented = MODEL_PREFIX + "{model}" if path == MODEL_PREFIX else path
        assert spec.method.lower() in DOC["paths"][documented], path
    assert len(DOC["paths"]) == len(SPECS)


def test_request_bodies_are_the_wire_models_schemas() -> None:
    schemas = DOC["components"]["schemas"]
    for model in (ChatCompletionRequest, EmbeddingRequest, FeedbackRequest):
        own = model.model_json_schema(ref_template="#/components/schemas/{model}")
        own.pop("$defs", None)
        assert schemas[model.__name__] == own
    body = DOC["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith("ChatCompletionRequest")
    ok = DOC["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(ok) == {"application/json", "text/event-stream"}


def test_every_error_is_the_openai_error_body() -> None:
    error = DOC["components"]["schemas"]["Error"]["properties"]["error"]
    assert set(error["required"]) == {"message", "type", "param", "code"}
    for op in (op for item in DOC["paths"].values() for op in item.values()):
        for status, response in op["responses"].items():
            if status != "200":
                assert response == {"$ref": f"#/components/responses/{status}"}


def test_it_is_served_as_the_prebuilt_bytes(gateway: Gateway) -> None:
    with gateway.http() as c:
        r = c.get("/openapi.json")
        assert c.post("/openapi.json").status_code == 405
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.content == openapi.DOCUMENT
