"""Cost arithmetic against hand-computed cases, alone and through the running gateway.

Prices are USD per million tokens: small 0.15 in / 0.60 out (0.075 cached where set), big
2.50 in / 10.00 out. Every expected number below is worked out by hand in its comment.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gateway.accounting import Usage, cost_usd, usage_from
from gateway.records import iso
from policies.compiled import CompiledPolicy
from policies.loader import build_policy
from tests.fakes.servers import FakeUpstreamHandle
from tests.gateway.conftest import GatewayFactory, PolicyFactory, chat, serve_scripted, sse_data


@pytest.fixture(scope="module")
def catalog() -> CompiledPolicy:
    data = {
        "version": 1,
        "models": [
            {"id": "cached", "provider": "openai", "base_url": "http://x/v1",
             "input_usd_per_mtok": 0.15, "output_usd_per_mtok": 0.60,
             "cached_input_usd_per_mtok": 0.075, "context_window": 1000},
            {"id": "plain", "provider": "openai", "base_url": "http://x/v1",
             "input_usd_per_mtok": 2.50, "output_usd_per_mtok": 10.0, "context_window": 1000},
        ],
        "routes": [{"name": "auto", "candidates": ["cached", "plain"]}],
        "default_route": "auto",
    }  # fmt: skip
    return build_policy(
        yaml.safe_dump(data).encode(), path="t.yaml", skills={}, discrimination=1.0, price_table={}
    )


@pytest.mark.parametrize(
    ("model", "usage", "expected"),
    [
        # 1000 * 0.15 + 500 * 0.60 = 150 + 300 = 450 micro-dollars
        ("cached", Usage(1000, 500), 450e-6),
        # (1000 - 400) * 0.15 + 400 * 0.075 + 500 * 0.60 = 90 + 30 + 300 = 420
        ("cached", Usage(1000, 500, cached=400), 420e-6),
        # no cached price: cached tokens cost the input price: 1000 * 2.5 + 500 * 10 = 7500
        ("plain", Usage(1000, 500, cached=400), 7500e-6),
        # reasoning tokens are inside completion tokens: 100 * 0.15 + 300 * 0.6 = 15 + 180
        ("cached", Usage(100, 300, reasoning=200), 195e-6),
        ("plain", Usage(0, 0), 0.0),
        # one million output tokens on big = its output price
        ("plain", Usage(0, 1_000_000), 10.0),
    ],
)
def test_cost_by_hand(catalog: CompiledPolicy, model: str, usage: Usage, expected: float) -> None:
    assert cost_usd(catalog.models[model], usage) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_usage_from_openai_usage_objects() -> None:
    full = {
        "prompt_tokens": 120, "completion_tokens": 80, "total_tokens": 200,
        "prompt_tokens_details": {"cached_tokens": 100, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 30},
    }  # fmt: skip
    assert usage_from(full) == Usage(120, 80, cached=100, reasoning=30)
    assert usage_from({"prompt_tokens": 5, "completion_tokens": 7}) == Usage(5, 7)
    assert usage_from({"prompt_tokens": 5, "prompt_tokens_details": None}) == Usage(5, 0)
    # a cached count above the prompt is clipped, never negative uncached tokens
    assert usage_from({"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 9}}) == (
        Usage(5, 0, cached=5)
    )
    assert usage_from(None) is None
    assert usage_from([1, 2]) is None
    assert usage_from({"prompt_tokens": "many"}) is None
    assert Usage(3, 4).total == 7


# -- through the gateway ---------------------------------------------------------------------

SMALL_3_16 = (3 * 0.15 + 16 * 0.60) / 1e6  # the fake's usage for "hello there world"
BIG_3_16 = (3 * 2.50 + 16 * 10.0) / 1e6


def test_json_cost_header_record_and_metrics(
    make_gateway: GatewayFactory, small: FakeUpstreamHandle
) -> None:
    gw = make_gateway()
    with gw.http() as c:
        r = c.post("/v1/chat/completions", json=chat())
    assert float(r.headers["x-effgate-cost-usd"]) == pytest.approx(SMALL_3_16, abs=1e-10)
    (rec,) = gw.records(at_least=1)
    assert rec["cost_usd"] == pytest.approx(SMALL_3_16)
    assert rec["reference_model"] == "big"  # the priciest candidate of route auto
    assert rec["baseline_cost_usd"] == pytest.approx(BIG_3_16)
    labels = {"route": "auto", "model": "small"}
    assert gw.metric("effgate_cost_usd_total", **labels) == pytest.approx(SMALL_3_16)
    assert gw.metric("effgate_baseline_cost_usd_total", **labels) == pytest.approx(BIG_3_16)
    assert gw.metric("effgate_savings_usd_total", **labels) == pytest.approx(BIG_3_16 - SMALL_3_16)
    tokens = {
        d: gw.metric("effgate_tokens_total", direction=d, **labels)
        for d in ("input", "output", "cached", "reasoning")
    }
    assert tokens == {"input": 3, "output": 16, "cached": 0, "reasoning": 0}


def test_explicit_model_has_itself_as_baseline(
    make_gateway: GatewayFactory, big: FakeUpstreamHandle
) -> None:
    gw = make_gateway()
    with gw.http() as c:
        c.post("/v1/chat/completions", json=chat(model="big"))
    (rec,) = gw.records(at_least=1)
    assert rec["route"] is None and rec["reference_model"] is None
    assert rec["cost_usd"] == rec["baseline_cost_usd"] == pytest.approx(BIG_3_16)
    assert gw.metric("effgate_savings_usd_total") == 0


def test_streamed_usage_is_accounted_whether_or_not_the_client_asked(
    make_gateway: GatewayFactory, small: FakeUpstreamHandle
) -> None:
    gw = make_gateway()
    with gw.http() as c:
        quiet = c.post("/v1/chat/completions", json=chat(stream=True))
        asked = c.post(
            "/v1/chat/completions",
            json=chat(stream=True, stream_options={"include_usage": True}),
        )
    assert not any(b'"usage":{' in d for d in sse_data(quiet.content))
    usage = orjson.loads(sse_data(asked.content)[-2])["usage"]
    assert usage["effgate_cost_usd"] == pytest.approx(SMALL_3_16, abs=1e-10)
    recs = gw.records(at_least=2)
    assert [r["tokens"]["output"] for r in recs] == [16, 16]
    assert [r["tokens"]["estimated"] for r in recs] == [False, False]
    assert [r["cost_usd"] for r in recs] == [pytest.approx(SMALL_3_16)] * 2
    assert gw.metric("effgate_cost_usd_total", model="small") == pytest.approx(2 * SMALL_3_16)


# upstream usage with cached and reasoning tokens: 1000 in (400 cached), 500 out (100 reasoning)
CACHED_USAGE = {
    "prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 400},
    "completion_tokens_details": {"reasoning_tokens": 100},
}  # fmt: skip
# small with a cached price: 600 * 0.15 + 400 * 0.075 + 500 * 0.60 = 90 + 30 + 300 = 420 micro$
CACHED_COST = 420e-6
# baseline on big (no cached price): 1000 * 2.5 + 500 * 10 = 7500 micro$
CACHED_BASELINE = 7500e-6


def _cached_policy(policy: PolicyFactory, url: str) -> dict[str, Any]:
    return policy(small_url=url, small={"cached_input_usd_per_mtok": 0.075})


def test_cached_tokens_json(make_gateway: GatewayFactory, policy: PolicyFactory) -> None:
    body = {
        "id": "x", "object": "chat.completion", "created": 0, "model": "mock-small",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "ok"}}],
        "usage": CACHED_USAGE,
    }  # fmt: skip
    with serve_scripted(orjson.dumps(body)) as (_, url):
        gw = make_gateway(_cached_policy(policy, url))
        with gw.http() as c:
            r = c.post("/v1/chat/completions", json=chat())
    assert r.json()["model"] == "small"
    assert r.json()["usage"] == CACHED_USAGE, "usage is relayed as the upstream sent it"
    assert float(r.headers["x-effgate-cost-usd"]) == pytest.approx(CACHED_COST, abs=1e-10)
    (rec,) = gw.records(at_least=1)
    assert rec["tokens"] == {
        "input": 1000, "output": 500, "cached": 400, "reasoning": 100, "estimated": False,
    }  # fmt: skip
    assert rec["baseline_cost_usd"] == pytest.approx(CACHED_BASELINE)
    assert gw.metric("effgate_tokens_total", direction="cached") == 400
    assert gw.metric("effgate_tokens_total", direction="reasoning") == 100


def test_cached_tokens_streamed(make_gateway: GatewayFactory, policy: PolicyFactory) -> None:
    top = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "mock-small"}
    events = [
        {**top, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "o"}}]},
        {**top, "choices": [{"index": 0, "delta": {"content": "k"}, "finish_reason": "stop"}]},
        {**top, "choices": [], "usage": CACHED_USAGE},
    ]
    raw = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    with serve_scripted(raw, "text/event-stream") as (_, url):
        gw = make_gateway(_cached_policy(policy, url))
        stream = gw.sdk().chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    assert [c.model for c in chunks] == ["small"] * 3
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 400
    assert (usage.model_extra or {})["effgate_cost_usd"] == pytest.approx(CACHED_COST)
    (rec,) = gw.records(at_least=1)
    assert rec["cost_usd"] == pytest.approx(CACHED_COST)
    assert rec["tokens"]["cached"] == 400 and rec["tokens"]["estimated"] is False


def test_missing_usage_is_estimated_and_marked(
    make_gateway: GatewayFactory, policy: PolicyFactory
) -> None:
    body = {
        "id": "x", "object": "chat.completion", "created": 0, "model": "mock-small",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "hello world"}}],
    }  # fmt: skip
    top = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "mock-small"}
    pieces = ["one", " two", " three"]
    events = [{**top, "choices": [{"index": 0, "delta": {"content": p}}]} for p in pieces]
    sse = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    with (
        serve_scripted(orjson.dumps(body)) as (_, json_url),
        serve_scripted(sse, "text/event-stream") as (_, sse_url),
    ):
        gw = make_gateway(policy(small_url=json_url, big_url=sse_url))
        with gw.http() as c:
            c.post("/v1/chat/completions", json=chat(model="small"))
            c.post("/v1/chat/completions", json=chat(model="big", stream=True))
    json_rec, stream_rec = gw.records(at_least=2)
    assert json_rec["tokens"]["estimated"] is True
    assert json_rec["tokens"]["output"] == 2  # "hello world" is two cl100k tokens
    assert json_rec["tokens"]["input"] > 0
    assert stream_rec["tokens"]["estimated"] is True
    assert stream_rec["tokens"]["output"] == 3  # one token per content event
    small_cost = (json_rec["tokens"]["input"] * 0.15 + 2 * 0.60) / 1e6
    assert json_rec["cost_usd"] == pytest.approx(small_cost)


def test_a_long_answer_without_usage_is_counted_off_the_loop(
    make_gateway: GatewayFactory, policy: PolicyFactory
) -> None:
    """An answer over THREAD_ABOVE_CHARS with no usage is counted in the token counter's
    threads (the gateway runs in this process), and exactly."""
    import threading

    from gateway.tokens import THREAD_ABOVE_CHARS, TokenCounter

    answer = "The clause limits liability to direct damages only. " * 400
    assert len(answer) > THREAD_ABOVE_CHARS
    body = {
        "id": "x", "object": "chat.completion", "created": 0, "model": "mock-small",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": answer}}],
    }  # fmt: skip

    def counting_threads() -> set[int | None]:
        return {t.ident for t in threading.enumerate() if t.name.startswith("effgate-tokens")}

    with serve_scripted(orjson.dumps(body)) as (_, url):
        gw = make_gateway(policy(small_url=url))
        before = counting_threads()
        with gw.http() as c:
            r = c.post("/v1/chat/completions", json=chat(model="small"))
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == answer
        assert counting_threads() - before
    (rec,) = gw.records(at_least=1)
    assert rec["tokens"]["estimated"] is True
    assert rec["tokens"]["output"] == TokenCounter.load().count(answer)


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_record_times_format_like_isoformat(ts: float) -> None:
    """iso() caches the date per second; it must write what datetime.isoformat writes."""
    expected = (dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds")).replace(
        "+00:00", "Z"
    )
    assert iso(ts) == expected
