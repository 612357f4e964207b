"""What a request brings to the gateway: effgate headers and request ids, auth, rate and body
limits, embeddings, and what the routing decision needs from the request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from fake_upstream.httpserver import Response
from tests.fakes.servers import FakeUpstreamHandle
from tests.gateway.conftest import (
    Gateway,
    GatewayFactory,
    PolicyFactory,
    chat,
    clear_of_minute_boundary,
    serve_scripted,
)

CHAT = "/v1/chat/completions"


# -- headers ---------------------------------------------------------------------------------

EFFGATE_HEADERS = ("x-effgate-model", "x-effgate-route", "x-effgate-upstream-ms")


@pytest.fixture
def answers(gateway: Gateway, small: FakeUpstreamHandle) -> Iterator[dict[str, httpx.Response]]:
    with gateway.http(headers={"x-request-id": "trace-42"}) as c:
        yield {
            "json": c.post(CHAT, json=chat()),
            "stream": c.post(CHAT, json=chat(stream=True)),
            "routed": c.post(CHAT, json=chat(model="routed")),
            "models": c.get("/v1/models"),
            "explain": c.post("/v1/route/explain", json=chat()),
            "healthz": c.get("/healthz"),
            "metrics": c.get("/metrics"),
        }


def test_every_response_carries_the_request_id_and_effgate_headers(
    answers: dict[str, httpx.Response],
) -> None:
    for name, r in answers.items():
        assert r.status_code == 200, name
        assert r.headers["x-effgate-request-id"] == "trace-42", name
        for header in EFFGATE_HEADERS:
            assert header in r.headers, (name, header)


def test_served_requests_name_model_route_and_time(answers: dict[str, httpx.Response]) -> None:
    for name in ("json", "stream"):
        r = answers[name]
        assert (r.headers["x-effgate-model"], r.headers["x-effgate-route"]) == ("small", "auto")
        assert float(r.headers["x-effgate-upstream-ms"]) > 0
    routed = answers["routed"]
    assert routed.headers["x-effgate-model"] == "big"
    assert float(routed.headers["x-effgate-quality"]) == pytest.approx(0.9677, abs=1e-4)
    assert float(routed.headers["x-effgate-difficulty"]) == 0.0
    assert "x-effgate-cost-usd" in answers["json"].headers
    assert "x-effgate-cost-usd" not in answers["stream"].headers  # known only at the end


@pytest.mark.parametrize("sent", ["has space", "x" * 200, "new\tline", "é"])
def test_unsafe_request_ids_are_replaced(gateway: Gateway, sent: str) -> None:
    with gateway.http() as c:
        r = c.get("/healthz", headers={b"x-request-id": sent.encode()})
    rid = r.headers["x-effgate-request-id"]
    assert rid != sent and rid.startswith("req_")


def test_request_ids_are_unique(gateway: Gateway) -> None:
    with gateway.http() as c:
        ids = {c.get("/healthz").headers["x-effgate-request-id"] for _ in range(20)}
    assert len(ids) == 20


def test_route_header_and_task_metadata(gateway: Gateway, big: FakeUpstreamHandle) -> None:
    with gateway.http() as c:
        r = c.post(
            CHAT,
            json=chat(model="auto", metadata={"task": "code"}),
            headers={"x-effgate-route": "routed", "x-effgate-task": "summarize"},
        )
    assert r.headers["x-effgate-route"] == "routed" and r.headers["x-effgate-model"] == "big"
    (rec,) = gateway.records(at_least=1)
    assert rec["task"] == "summarize", "the header wins over metadata"
    assert big.stats["recent"][-1]["body"]["metadata"] == {"task": "code"}


# -- auth ------------------------------------------------------------------------------------

KEYS = {"sk-alpha": "alpha", "sk-beta": "beta"}


@pytest.mark.parametrize(
    "auth", [None, "", "Bearer", "Bearer sk-wrong", "Basic sk-alpha", "sk-alpha"]
)
def test_bad_credentials_are_401(
    make_gateway: GatewayFactory, small: FakeUpstreamHandle, auth: str | None
) -> None:
    gw = make_gateway(api_keys=KEYS)
    headers = {} if auth is None else {"authorization": auth}
    with gw.http(headers=headers) as c:
        r = c.post(CHAT, json=chat())
    assert r.status_code == 401
    err = r.json()["error"]
    assert (err["type"], err["code"]) == ("authentication_error", "invalid_api_key")
    assert small.stats["requests_total"] == 0


def test_keys_map_to_tenants(make_gateway: GatewayFactory, small: FakeUpstreamHandle) -> None:
    gw = make_gateway(api_keys=KEYS)
    with gw.http() as c:
        for key in ("sk-alpha", "sk-beta"):
            assert c.post(CHAT, json=chat(), headers={"authorization": f"bearer {key}"}).is_success
        for path in ("/healthz", "/readyz", "/metrics"):
            assert c.get(path).status_code == 200, path  # probes need no key
    assert [r["tenant"] for r in gw.records(at_least=2)] == ["alpha", "beta"]


def test_every_v1_endpoint_needs_a_key(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(api_keys=KEYS)
    with gw.http() as c:
        codes = {
            "models": c.get("/v1/models").status_code,
            "model": c.get("/v1/models/small").status_code,
            "explain": c.post("/v1/route/explain", json=chat()).status_code,
        }
    assert codes == {"models": 401, "model": 401, "explain": 401}


# -- rate limit and body limit ---------------------------------------------------------------


def test_rate_limit_is_per_tenant(make_gateway: GatewayFactory, small: FakeUpstreamHandle) -> None:
    gw = make_gateway(api_keys=KEYS, rate_limit_rpm=2)
    clear_of_minute_boundary()
    alpha = {"authorization": "Bearer sk-alpha"}
    beta = {"authorization": "Bearer sk-beta"}
    with gw.http() as c:
        codes = [c.post(CHAT, json=chat(), headers=alpha).status_code for _ in range(3)]
        limited = c.post(CHAT, json=chat(), headers=alpha)
        other = c.post(CHAT, json=chat(), headers=beta)
    assert codes == [200, 200, 429]
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert other.status_code == 200
    assert small.stats["requests"][CHAT] == 3


@pytest.mark.parametrize("chunked", [False, True])
def test_body_limit(make_gateway: GatewayFactory, small: FakeUpstreamHandle, chunked: bool) -> None:
    gw = make_gateway(max_body_bytes=1000)
    big = b'{"model": "auto", "messages": [{"role": "user", "content": "' + b"x" * 2000 + b'"}]}'
    small_body = b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}]}'

    def content(data: bytes) -> Any:
        if not chunked:
            return data
        return iter([data[i : i + 100] for i in range(0, len(data), 100)])

    with gw.http() as c:
        too_big = c.post(CHAT, content=content(big), headers={"content-type": "application/json"})
        ok = c.post(CHAT, content=content(small_body))
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "request_too_large"
    assert ok.status_code == 200
    assert small.stats["requests"][CHAT] == 1


def test_context_window_is_enforced(
    make_gateway: GatewayFactory, policy: PolicyFactory, small: FakeUpstreamHandle
) -> None:
    gw = make_gateway(policy(small={"context_window": 200}, big={"context_window": 400}))
    with gw.http() as c:
        fits_big = c.post(CHAT, json=chat("word " * 250))
        fits_none = c.post(CHAT, json=chat("word " * 800))
    assert fits_big.status_code == 200 and fits_big.headers["x-effgate-model"] == "big"
    assert fits_none.status_code == 400
    err = fits_none.json()["error"]
    assert (err["code"], err["param"]) == ("context_length_exceeded", "messages")
    assert small.stats["requests_total"] == 0


def test_embeddings_pass_through(gateway: Gateway, small: FakeUpstreamHandle) -> None:
    client = gateway.sdk()
    out = client.embeddings.create(model="small", input=["one two", "three"])
    assert [d.index for d in out.data] == [0, 1] and len(out.data[0].embedding) == 64
    assert out.model == "small"
    assert small.stats["recent"][-1]["body"] == {
        "model": "mock-small",
        "input": ["one two", "three"],
        "encoding_format": "base64",
    }
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="auto-nope", input="x")


# -- what the decision needs from the request ------------------------------------------------

IMAGE: Any = [
    {"type": "text", "text": "what is in this picture?"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
]


def test_capabilities_steer_the_route(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
) -> None:
    gw = make_gateway(policy(small={"capabilities": ["streaming", "tools", "json_schema"]}))
    with gw.http() as c:
        routed = c.post(
            CHAT, json={"model": "auto", "messages": [{"role": "user", "content": IMAGE}]}
        )
        direct = c.post(
            CHAT, json={"model": "small", "messages": [{"role": "user", "content": IMAGE}]}
        )
    assert routed.status_code == 200 and routed.headers["x-effgate-model"] == "big"
    assert big.stats["recent"][-1]["body"]["messages"][0]["content"] == IMAGE
    assert direct.status_code == 400
    assert direct.json()["error"]["type"] == "invalid_request_error"
    assert small.stats["requests_total"] == 0


@pytest.mark.parametrize(
    ("header", "value"),
    [("x-effgate-max-cost-usd", "0.0000001"), ("x-effgate-quality-bar", "-1"),
     ("x-effgate-quality-bar", "nan"), ("x-effgate-max-cost-usd", "cheap"),
     # non-finite: the engine refuses an infinite bar (these were 500s)
     ("x-effgate-quality-bar", "inf"), ("x-effgate-quality-bar", "1e999"),
     ("x-effgate-max-cost-usd", "inf")],
)  # fmt: skip
def test_request_headers_are_validated(
    gateway: Gateway, small: FakeUpstreamHandle, header: str, value: str
) -> None:
    with gateway.http() as c:
        r = c.post(CHAT, json=chat(model="routed"), headers={header: value})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert small.stats["requests_total"] == 0


@pytest.mark.parametrize("client", ["httptools", "aiohttp", "httpx"])
def test_a_body_nested_deeper_than_can_be_forwarded_is_a_400(
    make_gateway: GatewayFactory, small: FakeUpstreamHandle, client: str
) -> None:
    """orjson reads 1024 levels but writes 254: such a body was a 500 when it was encoded for
    the upstream. It is a 400 now, and the upstream is never called."""
    gw = make_gateway(http_client=client)
    deep = b"[" * 300 + b"]" * 300
    chat_raw = b'{"model":"small","messages":[{"role":"user","content":"hi"}],"metadata":{"a":'
    bodies = [
        (CHAT, chat_raw + deep + b"}}"),
        (CHAT, chat_raw + deep + b'},"stream":true}'),
        ("/v1/embeddings", b'{"model":"small","input":"x","extra":' + deep + b"}"),
    ]
    with gw.http() as c:
        for path, raw in bodies:
            r = c.post(path, content=raw, headers={"content-type": "application/json"})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["type"] == "invalid_request_error"
            assert "nested too deeply" in r.json()["error"]["message"]
        assert c.post(CHAT, json=chat(model="small")).status_code == 200  # circuit unharmed
    assert small.stats["requests_total"] == 1


def test_an_upstream_cookie_never_rides_along_on_the_next_request(
    make_gateway: GatewayFactory, policy: PolicyFactory
) -> None:
    """One upstream session serves every tenant, so it keeps no cookies."""
    reply = orjson.dumps(
        {"id": "x", "object": "chat.completion", "model": "mock-small", "choices": []}
    )
    with serve_scripted(reply) as (upstream, url):
        upstream.response = Response(200, reply, headers=(("set-cookie", "session=tenant-a"),))
        # a host name, not an IP: cookie jars ignore cookies set by bare IP addresses
        gw = make_gateway(policy(small_url=url.replace("127.0.0.1", "localhost")))
        with gw.http() as c:
            for _ in range(2):
                assert c.post("/v1/chat/completions", json=chat(model="small")).status_code == 200
    assert len(upstream.requests) == 2
    assert all("cookie" not in r.headers for r in upstream.requests)


def test_a_stream_flag_that_is_not_a_boolean_is_refused(gateway: Gateway) -> None:
    with gateway.http() as http:
        r = http.post("/v1/chat/completions", json={**chat(), "stream": "true"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "stream" and err["type"] == "invalid_request_error"
