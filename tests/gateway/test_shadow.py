"""Shadow evaluation end to end: real fakes for the served, the shadow and the judge model.

The judge is a fake upstream with scripted grades: an answer that says ``mock-big says``
scores 1, one that says ``mock-small says`` scores 0 (fake_upstream.replies.judge_text).
The route serves ``small`` (the stub difficulty makes it clear the bar), shadows ``big``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from gateway.shadow import answer_from_events, judge_messages, parse_grades
from router_models.signature import SIGNATURE_VERSION
from tests.fakes.servers import FakeUpstreamHandle, serve_fake_upstream
from tests.gateway.conftest import (
    TIMEOUTS,
    GatewayFactory,
    PolicyFactory,
    StubEstimator,
    chat,
    serve_scripted,
    wait_until,
)

RULES = (("mock-big says", 1.0), ("mock-small says", 0.0))


@pytest.fixture(scope="module")
def judge_fake() -> Iterator[FakeUpstreamHandle]:
    with serve_fake_upstream(models=("mock-judge",), judge=RULES) as fake:
        yield fake


@pytest.fixture
def judge(judge_fake: FakeUpstreamHandle) -> FakeUpstreamHandle:
    judge_fake.reset()
    return judge_fake


def _policy(policy: PolicyFactory, judge_url: str, **shadow: Any) -> dict[str, Any]:
    data = policy(
        routes=[
            {"name": "auto", "candidates": ["small", "big"]},
            {
                "name": "routed",
                "candidates": ["small", "big"],
                "quality_bar": 0.8,
                "shadow": {"sample": 1.0, "judge": "judge", "daily_usd": 1.0, **shadow},
            },
        ]
    )
    data["models"].append(
        {
            "id": "judge",
            "provider": "openai",
            "base_url": judge_url,
            "upstream_model": "mock-judge",
            "input_usd_per_mtok": 1.0,
            "output_usd_per_mtok": 4.0,
            "context_window": 128000,
            "timeouts": dict(TIMEOUTS),
            "max_retries": 0,
        }
    )
    return data


def _easy() -> StubEstimator:
    return StubEstimator(value=-1.0)  # P(small) = sigmoid(1.7 * 1.5) = 0.93 >= 0.8


def _labels(gw: Any, n: int) -> list[dict[str, Any]]:
    def labels() -> list[dict[str, Any]]:
        return [r for r in gw.records() if r["type"] == "label"]

    wait_until(lambda: len(labels()) >= n, 10, f"{n} label records")
    return labels()


def test_labels_land_for_served_and_shadow_models(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    judge: FakeUpstreamHandle,
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
) -> None:
    gw = make_gateway(_policy(policy, judge.base_url), estimator=_easy())
    with gw.http() as c:
        r = c.post("/v1/chat/completions", json=chat(model="routed"))
    assert r.status_code == 200 and r.headers["x-effgate-model"] == "small"
    rid = r.headers["x-effgate-request-id"]
    labels = {rec["model"]: rec for rec in _labels(gw, 2)}
    assert set(labels) == {"small", "big"}
    assert labels["small"]["score"] == 0.0 and labels["small"]["served"] is True
    assert labels["big"]["score"] == 1.0 and labels["big"]["served"] is False
    for rec in labels.values():
        assert rec["request_id"] == rid and rec["source"] == "judge" and rec["judge"] == "judge"
        assert rec["route"] == "routed"
    wait_until(lambda: gw.metric("effgate_evaluations_total", result="ok") == 1)
    # the shadow call and the judge call were real calls to their upstreams
    assert big.stats["requests"]["/v1/chat/completions"] == 1
    assert judge.stats["requests"]["/v1/chat/completions"] == 1
    # spend: counted as evaluation, never as served cost or savings
    assert gw.metric("effgate_evaluation_cost_usd_total", role="shadow", model="big") > 0
    assert gw.metric("effgate_evaluation_cost_usd_total", role="judge", model="judge") > 0
    assert gw.metric("effgate_cost_usd_total", model="big") == 0
    assert gw.metric("effgate_cost_usd_total", model="judge") == 0
    assert gw.metric("effgate_cost_usd_total", model="small") > 0
    # calibration: the predicted P of both models beside the judge's grade
    out = gw.metric("effgate_calibration_outcomes_total", source="judge")
    assert out == 2
    pred = gw.metric("effgate_calibration_predicted_total", source="judge", model="small")
    assert pred == pytest.approx(0.9277, abs=1e-3)
    assert gw.metric("effgate_calibration_observed_total", source="judge", model="big") == 1.0


def test_the_client_response_is_neither_delayed_nor_changed(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    judge: FakeUpstreamHandle,
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
) -> None:
    data = _policy(policy, judge.base_url)
    data["routes"].append({"name": "plain", "candidates": ["small", "big"], "quality_bar": 0.8})
    gw = make_gateway(data, estimator=_easy())
    big.set_faults({"kind": "slow_first_byte", "ms": 1500, "count": 2})
    with gw.http() as c:
        t0 = time.monotonic()
        shadowed = c.post("/v1/chat/completions", json=chat(model="routed"))
        took = time.monotonic() - t0
        # the answer is back while its evaluation still waits on the slow shadow model
        assert gw.metric("effgate_evaluations_total", result="ok") == 0
        plain = c.post("/v1/chat/completions", json=chat(model="plain"))
        with c.stream("POST", "/v1/chat/completions", json=chat(model="routed", stream=True)) as s:
            streamed = b"".join(s.iter_bytes())
    assert took < 1.5, took
    a, b = shadowed.json(), plain.json()
    assert a["choices"] == b["choices"] and a["usage"] == b["usage"] and a["model"] == "small"
    assert set(shadowed.headers) == set(plain.headers)
    assert b"[DONE]" in streamed and b"error" not in streamed
    wait_until(lambda: gw.metric("effgate_evaluations_total", result="ok") == 2, 10)
    labels = _labels(gw, 4)
    served = [r for r in labels if r["served"]]
    assert [r["score"] for r in served] == [0.0, 0.0]  # the streamed answer was graded too


def test_a_shadowed_request_on_a_route_without_a_bar_keeps_its_signature(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    judge: FakeUpstreamHandle,
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
) -> None:
    # "routed" signatures (the default) follow labels: the judge's are labels for training
    data = _policy(policy, judge.base_url)
    data["routes"][0]["shadow"] = {"sample": 1.0, "judge": "judge", "daily_usd": 1.0}
    gw = make_gateway(data)
    with gw.http() as c:
        r = c.post("/v1/chat/completions", json=chat(model="auto"))
    assert r.status_code == 200
    rid = r.headers["x-effgate-request-id"]
    assert {rec["request_id"] for rec in _labels(gw, 2)} == {rid}
    (req,) = [rec for rec in gw.records() if rec["type"] == "request"]
    assert req["decision"]["difficulty"] is None and req["signature"]["v"] == SIGNATURE_VERSION


def test_a_judge_that_sends_no_usage_is_counted_off_the_loop(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
) -> None:
    """A judge without `usage`: its tokens are counted (the request body of a long prompt,
    ~28 KB here, in the token counter's threads) and its spend is still evaluation spend."""
    from gateway.tokens import THREAD_ABOVE_CHARS

    message = {"role": "assistant", "content": '{"A": 1, "B": 0}'}
    body = {
        "id": "j", "object": "chat.completion", "created": 0, "model": "mock-judge",
        "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
    }  # fmt: skip
    prompt = "Please review this contract clause for risk. " * 700
    assert len(prompt) > THREAD_ABOVE_CHARS

    def counting_threads() -> set[int | None]:
        return {t.ident for t in threading.enumerate() if t.name.startswith("effgate-tokens")}

    with serve_scripted(orjson.dumps(body)) as (judge, url):
        gw = make_gateway(_policy(policy, url), estimator=_easy())
        before = counting_threads()
        with gw.http() as c:
            r = c.post("/v1/chat/completions", json=chat(prompt, model="routed"))
        assert r.status_code == 200
        labels = _labels(gw, 2)
        # the prompt is far from the window: only the judge's body went to the counter's
        # threads (the gateway runs in this process)
        assert counting_threads() - before
    assert sorted(rec["score"] for rec in labels) == [0.0, 1.0]
    spent = gw.metric("effgate_evaluation_cost_usd_total", role="judge", model="judge")
    # at $1 per million input tokens, the judge's prompt (both answers and the capped
    # request) is thousands of tokens: more than the grade's few output tokens cost
    assert spent > 4000 / 1e6
    assert gw.metric("effgate_cost_usd_total", model="judge") == 0


def test_budget_cap_holds(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    judge: FakeUpstreamHandle,
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
) -> None:
    # each evaluation reserves its worst case (shadow + judge at max output) first and
    # settles to its (much smaller) real cost when done: a slow shadow model keeps all six
    # reservations open at once, so the cap has to refuse some whatever the machine's speed
    big.set_faults({"kind": "slow_first_byte", "ms": 1000, "count": 100})
    gw = make_gateway(_policy(policy, judge.base_url, daily_usd=0.02), estimator=_easy())
    with gw.http() as c:
        for _ in range(6):
            assert c.post("/v1/chat/completions", json=chat(model="routed")).status_code == 200

    def settled() -> bool:
        done = sum(gw.metric("effgate_evaluations_total", result=r) for r in ("ok", "budget"))
        return done == 6

    wait_until(settled, 10, "six evaluations settled")
    ok = gw.metric("effgate_evaluations_total", result="ok")
    assert 1 <= ok < 6 and gw.metric("effgate_evaluations_total", result="budget") == 6 - ok
    spent = gw.metric("effgate_evaluation_cost_usd_total")
    assert 0 < spent <= 0.02
    assert big.stats["requests"]["/v1/chat/completions"] == ok  # skipped ones cost nothing


def test_judge_failure_and_garbage_are_counted_never_seen(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    judge: FakeUpstreamHandle,
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
) -> None:
    gw = make_gateway(_policy(policy, judge.base_url), estimator=_easy())
    judge.set_faults({"kind": "status", "status": 500, "count": 1})
    with gw.http() as c:
        r = c.post("/v1/chat/completions", json=chat(model="routed"))
    assert r.status_code == 200 and "error" not in r.json()
    wait_until(lambda: gw.metric("effgate_evaluations_total", result="judge_error") == 1)
    assert [x for x in gw.records() if x["type"] == "label"] == []
    # a judge that does not grade (a plain fake echoes its prompt): unparseable
    with serve_fake_upstream(models=("mock-judge",)) as echo:
        gw2 = make_gateway(_policy(policy, echo.base_url), estimator=_easy())
        with gw2.http() as c:
            assert c.post("/v1/chat/completions", json=chat(model="routed")).status_code == 200
        wait_until(lambda: gw2.metric("effgate_evaluations_total", result="unparseable") == 1)


def test_a_full_queue_drops_and_counts(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    judge: FakeUpstreamHandle,
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
) -> None:
    gw = make_gateway(_policy(policy, judge.base_url, max_pending=1), estimator=_easy())
    big.set_faults({"kind": "slow_first_byte", "ms": 800, "count": 5})
    with gw.http() as c:
        for _ in range(3):
            assert c.post("/v1/chat/completions", json=chat(model="routed")).status_code == 200
    wait_until(lambda: gw.metric("effgate_evaluations_total", result="ok") == 1, 10)
    assert gw.metric("effgate_evaluations_total", result="dropped") == 2


def test_unsampled_and_explicit_requests_are_not_evaluated(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    judge: FakeUpstreamHandle,
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
) -> None:
    gw = make_gateway(_policy(policy, judge.base_url, sample=1e-9), estimator=_easy())
    with gw.http() as c:
        for body in (chat(model="routed"), chat(model="small")):
            assert c.post("/v1/chat/completions", json=body).status_code == 200
    gw.records(at_least=2)
    time.sleep(0.2)
    assert judge.stats["requests"].get("/v1/chat/completions", 0) == 0
    assert gw.metric("effgate_evaluations_total") == 0


def test_shadow_config_is_validated(policy: PolicyFactory, judge: FakeUpstreamHandle) -> None:
    from policies.errors import PolicyLoadError
    from policies.loader import build_policy

    def build(**shadow: Any) -> Any:
        import yaml

        data = _policy(policy, judge.base_url, **shadow)
        return build_policy(
            yaml.safe_dump(data).encode(),
            path="p.yaml",
            skills={"small": 0.5, "big": 2.0},
            discrimination=1.7,
        )

    compiled = build()
    sh = compiled.routes["routed"].shadow
    assert sh is not None and [m.id for m in sh.models] == ["big"] and sh.judge.id == "judge"
    assert "acceptable" in sh.rubric  # the default rubric
    with pytest.raises(PolicyLoadError, match="judge"):
        build(judge="nobody")
    with pytest.raises(PolicyLoadError, match="unknown model 'nobody'"):
        build(models=["nobody"])
    with pytest.raises(PolicyLoadError, match="sample"):
        build(sample=1.5)


def test_grades_and_answers_parse_strictly() -> None:
    assert parse_grades('ok: {"A": 0.5, "B": 1}', "AB") == {"A": 0.5, "B": 1.0}
    assert parse_grades('{"A": 0.5}', "AB") is None  # every answer needs a grade
    assert parse_grades('{"A": 1.5, "B": 0}', "AB") is None  # out of range
    assert parse_grades('{"A": true, "B": 0}', "AB") is None
    assert parse_grades("no json here", "A") is None
    assert parse_grades('{"A": "x"} then {"A": 0.25}', "A") == {"A": 0.25}
    events = [
        b'{"choices":[{"index":0,"delta":{"content":"Hel"}}]}',
        b"not json",
        b'{"choices":[{"index":0,"delta":{"content":"lo"}}]}',
        b'{"choices":[{"index":1,"delta":{"content":"other choice"}}]}',
    ]
    assert answer_from_events(events) == "Hello"
    msgs = judge_messages("RUBRIC", [{"role": "user", "content": "q" * 50_000}], {"A": "x"})
    assert "RUBRIC" in msgs[0]["content"] and len(msgs[1]["content"]) < 30_000
