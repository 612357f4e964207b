"""The service around chat completions: /v1/models, /v1/route/explain, health and readiness,
start-up failures, metrics, and policy reloads."""

from __future__ import annotations

import gc
import hashlib
import warnings
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from prometheus_client import CollectorRegistry

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
