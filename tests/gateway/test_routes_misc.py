"""Everything around chat completions: models, explain, health, metrics, headers, auth, limits."""

from __future__ import annotations

import gc
import hashlib
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import yaml
from prometheus_client import CollectorRegistry

from fake_upstream.httpserver import Response
from gateway.app import create_app
from gateway.settings import Settings
from gateway.upstreams.pool import default_factory
from policies.store import PolicyLoadError
from tests.fakes.servers import FakeUpstreamHandle, serve_fake_upstream
from tests.gateway.conftest import (
    Gateway,
    GatewayFactory,
    PolicyFactory,
    StubEstimator,
    chat,
    serve_scripted,
    wait_until,
)

CHAT = "/v1/chat/completions"


# -- /v1/models ------------------------------------------------------------------------------


def test_models_lists_catalog_and_routes(gateway: Gateway) -> None:
    client = gateway.sdk()
    listed = client.models.list()
    assert [m.id for m in listed.data] == ["small", "big", "auto", "routed"]
    by_id = {m.id: m for m in listed.data}
    small = (by_id["small"].model_extra or {})["effgate"]
    assert small["kind"] == "model" and small["upstream_model"] == "mock-small"
    assert (small["input_usd_per_mtok"], small["output_usd_per_mtok"]) == (0.15, 0.60)
    assert small["skill"] == 0.5, "skills come from the injected estimator"
    routed = (by_id["routed"].model_extra or {})["effgate"]
    assert routed == {
        "kind": "route", "candidates": ["small", "big"], "quality_bar": 0.8,
        "reference_model": "big", "default": False,
    }  # fmt: skip
    assert (by_id["auto"].model_extra or {})["effgate"]["default"] is True
    assert client.models.retrieve("big").id == "big"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-nope")


# -- /v1/route/explain -----------------------------------------------------------------------


def test_explain_shows_the_decision_without_calling_upstream(
    gateway: Gateway, small: FakeUpstreamHandle, big: FakeUpstreamHandle
) -> None:
    with gateway.http() as c:
        hard = c.post("/v1/route/explain", json=chat(model="routed")).json()
        gateway.estimator.value = -1.0  # easier: P(small) = sigmoid(1.7 * 1.5) = 0.93
        easy = c.post("/v1/route/explain", json=chat(model="routed")).json()
        lowered = c.post(
            "/v1/route/explain",
            json=chat(model="routed"),
            headers={"x-effgate-quality-bar": "0.6"},
        ).json()
    assert hard["object"] == "route.explanation" and hard["route"] == "routed"
    assert (hard["model"], hard["reason"], hard["fallbacks"]) == (
        "big", "cheapest_above_bar", ["small"],
    )  # fmt: skip
    assert [c["model"] for c in hard["candidates"]] == ["small", "big"]
    assert hard["candidates"][0]["p"] == pytest.approx(0.7006, abs=1e-4)
    assert hard["policy_sha256"] == hashlib.sha256(gateway.policy_path.read_bytes()).hexdigest()
    assert easy["model"] == "small" and easy["difficulty"] == -1.0
    assert lowered["quality_bar"] == 0.6
    assert small.stats["requests_total"] == 0 and big.stats["requests_total"] == 0


def test_explain_route_header_overrides_the_model(gateway: Gateway) -> None:
    with gateway.http() as c:
        out = c.post(
            "/v1/route/explain", json=chat(model="auto"), headers={"x-effgate-route": "routed"}
        ).json()
        bad = c.post(
            "/v1/route/explain",
            json=chat(model="routed"),
            headers={"x-effgate-quality-bar": "high"},
        )
    assert out["route"] == "routed" and out["quality_bar"] == 0.8
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-effgate-quality-bar"


# -- health, readiness, metrics --------------------------------------------------------------


def test_healthz_and_readyz(gateway: Gateway) -> None:
    with gateway.http() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz")
    assert ready.status_code == 200
    sha = hashlib.sha256(gateway.policy_path.read_bytes()).hexdigest()
    assert ready.json() == {"status": "ready", "policy_sha256": sha}


@pytest.mark.anyio
async def test_a_bad_policy_fails_startup_and_closes_what_it_opened(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nmodels: []\n")
    settings = Settings(policy_path=bad, records_dir=tmp_path / "records")
    app = create_app(settings, registry=CollectorRegistry(), estimator=StubEstimator())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(PolicyLoadError):
            async with app.lifespan_context(app):
                pass
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


class _FailingRegistry(CollectorRegistry):
    """A registry that refuses the circuit collector: start-up fails after the upstream
    clients exist."""

    def register(self, collector: Any) -> None:
        if type(collector).__name__ == "CircuitCollector":
            raise ValueError("refused")
        super().register(collector)


@pytest.mark.anyio
async def test_a_start_up_that_fails_late_closes_the_upstream_clients(
    tmp_path: Path, policy: PolicyFactory
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy()))
    built: list[Any] = []
    base = default_factory(1.0)

    class Recorded:
        """The real client, with a record of whether it was closed."""

        def __init__(self, entry: Any) -> None:
            self.inner = base(entry)
            self.name = self.inner.name
            self.closed = False

        async def complete(self, *a: Any) -> Any:
            return await self.inner.complete(*a)

        async def open_stream(self, *a: Any) -> Any:
            return await self.inner.open_stream(*a)

        async def aclose(self) -> None:
            self.closed = True
            await self.inner.aclose()

    def factory(entry: Any) -> Any:
        up = Recorded(entry)
        built.append(up)
        return up

    settings = Settings(policy_path=path, records_dir=tmp_path / "records")
    app = create_app(
        settings, registry=_FailingRegistry(), estimator=StubEstimator(), upstream_factory=factory
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="refused"):
            async with app.lifespan_context(app):
                pass
        gc.collect()
    assert len(built) == 2
    assert all(up.closed for up in built), "every client built is closed again"
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


def test_metrics_exposition(
    make_gateway: GatewayFactory, policy: PolicyFactory, small: FakeUpstreamHandle
) -> None:
    gw = make_gateway(policy(budget={"daily_usd": 25.0}))
    with gw.http() as c:
        c.post(CHAT, json=chat())
        r = c.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    samples = gw.scrape()
    sha = hashlib.sha256(gw.policy_path.read_bytes()).hexdigest()
    info = frozenset({("sha256", sha[:12]), ("version", "1")})
    assert samples[("effgate_policy_info", info)] == 1
    assert samples[("effgate_budget_usd", frozenset({("period", "day")}))] == 25.0
    for model in ("small", "big"):
        assert samples[("effgate_circuit_state", frozenset({("upstream", model)}))] == 0
    ok = frozenset(
        {("endpoint", "chat"), ("route", "auto"), ("model", "small"), ("status_class", "2xx"),
         ("outcome", "ok"), ("stream", "false")}
    )  # fmt: skip
    assert samples[("effgate_requests_total", ok)] == 1
    decided = frozenset({("route", "auto"), ("model", "small"), ("reason", "first_candidate")})
    assert samples[("effgate_routing_decisions_total", decided)] == 1
    names = {name for name, _ in samples}
    for name in (
        "effgate_request_duration_seconds_bucket",
        "effgate_upstream_duration_seconds_count",
        "effgate_tokens_per_request_count",
        "effgate_policy_reloads_total",
        "effgate_records_dropped_total",
    ):
        assert name in names, name


def test_client_sent_names_never_become_labels(gateway: Gateway) -> None:
    with gateway.http() as c:
        c.post(CHAT, json=chat(model="evil-model-name"))
        c.post(CHAT, json=chat(), headers={"x-effgate-route": "evil-route"})
    labels = {v for (_, ls) in gateway.scrape() for _, v in ls}
    assert not any("evil" in v for v in labels)


def test_in_flight_gauge_counts_open_requests(
    make_gateway: GatewayFactory, policy: PolicyFactory, small: FakeUpstreamHandle
) -> None:
    timeouts = {"connect_s": 1.0, "first_byte_s": 5.0, "idle_s": 5.0, "total_s": 5.0}
    gw = make_gateway(policy(small={"timeouts": timeouts}))
    body = chat("[[fault:stall=2,ms=1500]]", stream=True)
    with httpx.Client(base_url=gw.base_url, timeout=10) as c, c.stream("POST", CHAT, json=body):
        wait_until(lambda: gw.metric("effgate_in_flight_requests") == 1, 2, "one in flight")
    wait_until(lambda: gw.metric("effgate_in_flight_requests") == 0, 5, "none in flight")


def test_policy_file_changes_are_picked_up(
    make_gateway: GatewayFactory, policy: PolicyFactory, small: FakeUpstreamHandle
) -> None:
    gw = make_gateway(policy_poll_s=0.05)
    before = hashlib.sha256(gw.policy_path.read_bytes()).hexdigest()
    routes = [
        {"name": "auto", "candidates": ["big", "small"]},
        {"name": "fast", "candidates": ["small"]},
    ]
    gw.write_policy(policy(routes=routes))
    after = hashlib.sha256(gw.policy_path.read_bytes()).hexdigest()
    with gw.http() as c:
        wait_until(lambda: c.get("/readyz").json()["policy_sha256"] == after, what="reload")
        assert c.post(CHAT, json=chat()).headers["x-effgate-model"] == "big"
        assert c.post(CHAT, json=chat(model="fast")).headers["x-effgate-route"] == "fast"
        gw.policy_path.write_text("version: 1\nmodels: []\n")  # broken: the old one stays
        wait_until(lambda: gw.metric("effgate_policy_reloads_total", result="error") >= 1)
        assert c.get("/readyz").json()["policy_sha256"] == after
        assert c.post(CHAT, json=chat(model="fast")).status_code == 200
    assert gw.metric("effgate_policy_reloads_total", result="ok") == 1
    assert before != after


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
    left = 60 - time.time() % 60
    if left < 3:  # stay inside one fixed window
        time.sleep(left + 0.05)
    gw = make_gateway(api_keys=KEYS, rate_limit_rpm=2)
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


def test_reload_moves_new_requests_and_lets_in_flight_ones_finish(
    make_gateway: GatewayFactory, policy: PolicyFactory, small: FakeUpstreamHandle
) -> None:
    slow = {"connect_s": 1.0, "first_byte_s": 5.0, "idle_s": 5.0, "total_s": 10.0}
    gw = make_gateway(policy(small={"timeouts": slow}), policy_poll_s=0.05)
    with serve_fake_upstream(models=("mock-small",)) as replacement, gw.http() as c:
        body = chat("[[fault:stall=2,ms=1000]]", model="small", stream=True)
        with c.stream("POST", CHAT, json=body) as r:
            chunks = r.iter_raw()
            first = next(chunks)  # in flight on the old upstream
            gw.write_policy(policy(small={"timeouts": slow}, small_url=replacement.base_url))
            new_sha = hashlib.sha256(gw.policy_path.read_bytes()).hexdigest()
            wait_until(lambda: c.get("/readyz").json()["policy_sha256"] == new_sha, what="reload")
            assert c.post(CHAT, json=chat(model="small")).status_code == 200
            rest = first + b"".join(chunks)
        assert rest.endswith(b"data: [DONE]\n\n"), "the in-flight stream finished"
        assert replacement.stats["requests"][CHAT] == 1
    assert small.stats["requests"][CHAT] == 1


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
