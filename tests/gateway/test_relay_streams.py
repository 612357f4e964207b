"""The relay on unusual but valid upstream streams, and streams that end early: usage on
the last chunk, error events, empty streams, a first chunk that never comes."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest

from tests.fakes.servers import FakeUpstreamHandle
from tests.gateway.conftest import (
    TIMEOUTS,
    Gateway,
    GatewayFactory,
    PolicyFactory,
    chat,
    serve_scripted,
    sse_data,
    wait_until,
)

CHAT = "/v1/chat/completions"


def fast(**kw: float) -> dict[str, float]:
    return {**TIMEOUTS, **kw}


# -- what the relay does with unusual but valid upstream streams ------------------------------

TOP = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "mock-small"}
USAGE = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}


def sse(*events: dict[str, Any], done: bool = True) -> bytes:
    raw = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)
    return raw + (b"data: [DONE]\n\n" if done else b"")


@pytest.mark.parametrize("include_usage", [False, True])
def test_usage_riding_on_the_last_content_chunk(
    make_gateway: GatewayFactory, policy: PolicyFactory, include_usage: bool
) -> None:
    # some servers put usage on the final chunk that still has choices
    body = sse(
        {**TOP, "choices": [{"index": 0, "delta": {"content": "a"}}], "usage": None},
        {**TOP, "choices": [{"index": 0, "delta": {"content": "b"}, "finish_reason": "stop"}],
         "usage": USAGE},
    )  # fmt: skip
    with serve_scripted(body, "text/event-stream") as (_, url):
        gw = make_gateway(policy(small_url=url))
        req = chat(model="small", stream=True)
        if include_usage:
            req["stream_options"] = {"include_usage": True}
        with gw.http() as c:
            r = c.post(CHAT, json=req)
    data = sse_data(r.content)
    assert data[-1] == b"[DONE]"
    chunks = [orjson.loads(d) for d in data[:-1]]
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "ab"
    assert {c["model"] for c in chunks} == {"small"}
    last = chunks[-1]["usage"]
    if include_usage:
        assert last["completion_tokens"] == 2
        assert last["effgate_cost_usd"] == pytest.approx((10 * 0.15 + 2 * 0.60) / 1e6)
    else:
        assert last is None
    (rec,) = gw.records(at_least=1)
    assert rec["tokens"]["input"] == 10 and rec["tokens"]["estimated"] is False


def test_upstream_error_event_is_relayed_and_counted(
    make_gateway: GatewayFactory, policy: PolicyFactory
) -> None:
    error = {"error": {"message": "engine died", "type": "server_error", "param": None,
                       "code": None}}  # fmt: skip
    body = sse({**TOP, "choices": [{"index": 0, "delta": {"content": "a"}}]}, error, done=False)
    with serve_scripted(body + b"data: [DONE]\n\n", "text/event-stream") as (_, url):
        gw = make_gateway(policy(small_url=url))
        with gw.http() as c:
            r = c.post(CHAT, json=chat(model="small", stream=True))
    data = sse_data(r.content)
    assert orjson.loads(data[1]) == error
    wait_until(
        lambda: gw.metric("effgate_requests_total", outcome="stream_error") == 1,
        what="counted as a stream error",
    )


def test_stream_rejected_before_the_first_byte_is_a_plain_http_error(
    gateway: Gateway, small: FakeUpstreamHandle
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        gateway.sdk().chat.completions.create(
            model="small",
            messages=[{"role": "user", "content": "[[fault:status=400]]"}],
            stream=True,
        )
    assert info.value.response.headers["content-type"] == "application/json"
    assert info.value.response.headers["x-effgate-upstream"] == "small"


@pytest.mark.anyio
async def test_many_concurrent_streams(gateway: Gateway, small: FakeUpstreamHandle) -> None:
    import anyio

    async with gateway.async_sdk() as client:
        texts: list[str] = []

        async def one(i: int) -> None:
            stream = await client.chat.completions.create(
                model="small",
                messages=[{"role": "user", "content": f"stream number {i}"}],
                stream=True,
            )
            texts.append("".join([c.choices[0].delta.content or "" async for c in stream]))

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(one, i)
    assert len(texts) == 20
    assert all(t.startswith("mock-small says: stream number") for t in texts)
    assert small.stats["requests"][CHAT] == 20
    wait_until(lambda: gateway.metric("effgate_requests_total", outcome="ok") == 20)


def test_headers_then_no_first_chunk_times_out_and_falls_back(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
) -> None:
    # stall=0: the 200 and its headers arrive at once, the first event never does in time
    gw = make_gateway(policy(small={"timeouts": fast(first_byte_s=0.3)}))
    small.set_faults({"kind": "stall", "after_chunks": 0, "ms": 3000})
    with gw.http() as c:
        r = c.post(CHAT, json=chat(stream=True))
    assert r.status_code == 200 and r.headers["x-effgate-model"] == "big"
    assert gw.metric("effgate_upstream_errors_total", upstream="small", kind="timeout") == 1
    wait_until(lambda: small.stats["disconnects"] == 1, what="the silent upstream was closed")


def test_empty_stream_falls_back(
    make_gateway: GatewayFactory, policy: PolicyFactory, big: FakeUpstreamHandle
) -> None:
    with serve_scripted(b"", "text/event-stream") as (upstream, url):
        gw = make_gateway(policy(small_url=url, small={"max_retries": 0}))
        with gw.http() as c:
            r = c.post(CHAT, json=chat(stream=True))
    assert r.status_code == 200 and r.headers["x-effgate-model"] == "big"
    assert len(upstream.requests) == 1
    assert gw.metric("effgate_upstream_errors_total", upstream="small", kind="protocol") == 1


def test_json_dumps_spacing_is_rewritten_too(
    make_gateway: GatewayFactory, policy: PolicyFactory
) -> None:
    import json

    chunk = {**TOP, "choices": [{"index": 0, "delta": {"content": "hi"}}]}
    body = ("data: " + json.dumps(chunk) + "\n\ndata: [DONE]\n\n").encode()
    assert b'"model": "mock-small"' in body
    with serve_scripted(body, "text/event-stream") as (_, url):
        gw = make_gateway(policy(small_url=url))
        with gw.http() as c:
            r = c.post(CHAT, json=chat(model="small", stream=True))
    assert orjson.loads(sse_data(r.content)[0])["model"] == "small"
