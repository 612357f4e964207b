"""POST /v1/feedback: joins a served request by id, counts once, appends a feedback record."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from gateway.kv import MemoryKV
from tests.fakes.servers import FakeUpstreamHandle
from tests.gateway.conftest import Gateway, GatewayFactory, chat

FEEDBACK_KEYS = {"type", "request_id", "time", "accepted", "score"}


def serve_one(c: httpx.Client, **kw: Any) -> str:
    r = c.post("/v1/chat/completions", json=chat(**kw))
    assert r.status_code == 200
    rid: str = r.headers["x-effgate-request-id"]
    return rid


def send(c: httpx.Client, **body: Any) -> httpx.Response:
    return c.post("/v1/feedback", json=body)


def feedback_records(gw: Gateway, n: int) -> list[dict[str, Any]]:
    return [r for r in gw.records(at_least=n + 1) if r["type"] == "feedback"]


def test_accepted_joins_the_request(gateway: Gateway, small: FakeUpstreamHandle) -> None:
    with gateway.http() as c:
        rid = serve_one(c)
        r = send(c, request_id=rid, accepted=True)
    assert r.status_code == 200
    assert r.json() == {
        "object": "feedback", "request_id": rid, "accepted": True, "score": None,
        "route": "auto", "model": "small", "first": True,
    }  # fmt: skip
    assert gateway.metric("effgate_outcomes_total", route="auto", model="small") == 1
    assert gateway.metric("effgate_outcomes_total", outcome="accepted") == 1
    (fb,) = feedback_records(gateway, 1)
    assert set(fb) == FEEDBACK_KEYS
    assert (fb["request_id"], fb["accepted"], fb["score"]) == (rid, True, None)


def test_repeats_count_once_and_the_last_verdict_is_recorded(
    gateway: Gateway, small: FakeUpstreamHandle
) -> None:
    with gateway.http() as c:
        rid = serve_one(c)
        first = send(c, request_id=rid, accepted=True).json()
        again = send(c, request_id=rid, accepted=True).json()
        changed = send(c, request_id=rid, accepted=False).json()
    assert (first["first"], again["first"], changed["first"]) == (True, False, False)
    assert gateway.metric("effgate_outcomes_total", outcome="accepted") == 1
    assert gateway.metric("effgate_outcomes_total", outcome="rejected") == 0
    fbs = feedback_records(gateway, 3)
    assert [f["accepted"] for f in fbs] == [True, True, False]


def test_a_score_alone_decides_acceptance(gateway: Gateway, small: FakeUpstreamHandle) -> None:
    with gateway.http() as c:
        good, bad, both = serve_one(c), serve_one(c), serve_one(c)
        assert send(c, request_id=good, score=0.5).json()["accepted"] is True
        assert send(c, request_id=bad, score=0.49).json()["accepted"] is False
        # an explicit verdict wins over the score
        assert send(c, request_id=both, score=0.1, accepted=True).json()["accepted"] is True
    assert gateway.metric("effgate_outcomes_total", outcome="accepted") == 2
    assert gateway.metric("effgate_outcomes_total", outcome="rejected") == 1
    assert gateway.metric("effgate_feedback_score_count") == 3
    assert gateway.metric("effgate_feedback_score_sum") == pytest.approx(0.5 + 0.49 + 0.1)


def test_streamed_requests_join_too(gateway: Gateway, small: FakeUpstreamHandle) -> None:
    with gateway.http() as c:
        rid = serve_one(c, stream=True, model="routed")
        r = send(c, request_id=rid, accepted=False)
    assert r.status_code == 200
    assert (r.json()["route"], r.json()["model"]) == ("routed", "big")
    assert gateway.metric("effgate_outcomes_total", route="routed", outcome="rejected") == 1


def test_unknown_id_is_404(gateway: Gateway) -> None:
    with gateway.http() as c:
        r = send(c, request_id="req_never_served", accepted=True)
    assert r.status_code == 404
    err = r.json()["error"]
    assert (err["code"], err["param"]) == ("request_not_found", "request_id")
    assert gateway.metric("effgate_outcomes_total") == 0


def test_requests_that_reached_no_model_cannot_be_rated(gateway: Gateway) -> None:
    with gateway.http() as c:
        r = c.post("/v1/chat/completions", json=chat(model="nope"))
        rid = r.headers["x-effgate-request-id"]
        assert send(c, request_id=rid, accepted=True).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"request_id": "x"},  # neither accepted nor score
        {"request_id": "x", "accepted": True, "comment": "nice"},  # unknown field
        {"request_id": "x", "score": 1.5},
        {"request_id": "x", "score": -0.1},
        {"request_id": "", "accepted": True},
        {"accepted": True},
        {"request_id": "x", "accepted": "maybe"},
    ],
)
def test_invalid_feedback_is_400(gateway: Gateway, body: dict[str, Any]) -> None:
    with gateway.http() as c:
        r = send(c, **body)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_feedback_expires_with_the_retention(
    make_gateway: GatewayFactory, small: FakeUpstreamHandle
) -> None:
    clock = [1_000_000.0]
    gw = make_gateway(kv=MemoryKV(clock=lambda: clock[0]), feedback_ttl_s=3600)
    with gw.http() as c:
        rid = serve_one(c)
        # answered only once the summary is stored, before the test's clock moves
        assert send(c, request_id=rid, accepted=True).status_code == 200
        clock[0] += 3599
        assert send(c, request_id=rid, accepted=True).status_code == 200
        clock[0] += 2
        assert send(c, request_id=rid, accepted=True).status_code == 404


def test_feedback_needs_a_key_when_keys_are_set(
    make_gateway: GatewayFactory, small: FakeUpstreamHandle
) -> None:
    gw = make_gateway(api_keys={"sk-a": "team-a"})
    with gw.http(headers={"authorization": "Bearer sk-a"}) as c:
        rid = serve_one(c)
    with gw.http() as anonymous:
        assert send(anonymous, request_id=rid, accepted=True).status_code == 401
    with gw.http(headers={"authorization": "Bearer sk-a"}) as c:
        assert send(c, request_id=rid, accepted=True).status_code == 200
