"""RedisKV and the gateway against a real ``redis-server`` on a free loopback port.

The server is started by the test (no persistence). It is then killed or frozen mid-run:
every operation must fall back to the in-process store quickly, and the gateway must keep
serving, with feedback working for requests served after Redis went away. CI installs
``redis-server``; where it is missing these tests fail (they do not skip).
"""

from __future__ import annotations

import os
import signal
import time
from typing import cast

import httpx
import orjson
import pytest

from gateway.kv import KVUnavailable, RedisKV
from tests.fakes.servers import FakeUpstreamHandle
from tests.gateway.conftest import GatewayFactory, chat, clear_of_minute_boundary, wait_until
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis


# -- RedisKV ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_put_get_with_ttl_and_prefix(redis_server: RedisServer) -> None:
    kv = RedisKV(redis_server.url)
    try:
        await kv.put("req:1", b"summary", 120)
        assert await kv.get("req:1") == b"summary"
        assert await kv.get("req:missing") is None
        assert redis_server.client.get("effgate:req:1") == b"summary"
        assert 110 <= int(redis_server.client.ttl("effgate:req:1")) <= 120
        assert await kv.ping()
    finally:
        await kv.aclose()


@pytest.mark.anyio
async def test_rate_windows_are_shared_between_replicas(redis_server: RedisServer) -> None:
    clear_of_minute_boundary()
    a, b = RedisKV(redis_server.url), RedisKV(redis_server.url)
    try:
        assert [await a.hit("tenant:t", 60), await b.hit("tenant:t", 60)] == [1, 2]
        assert await a.hit("tenant:u", 60) == 1
        (key,) = redis_server.client.keys("effgate:rate:tenant:t:*")
        assert 60 < int(redis_server.client.ttl(key)) <= 120
    finally:
        await a.aclose()
        await b.aclose()


@pytest.mark.anyio
async def test_redis_killed_every_operation_falls_back_fast(redis_server: RedisServer) -> None:
    seen: list[str] = []
    kv = RedisKV(redis_server.url, on_fallback=seen.append)
    try:
        await kv.put("a", b"in-redis", 60)
        redis_server.kill()
        t0 = time.perf_counter()
        await kv.put("b", b"in-memory", 60)
        assert await kv.get("b") == b"in-memory"
        assert await kv.get("a") is None  # it lived in Redis only
        assert [await kv.hit("t", 60) for _ in range(2)] == [1, 2]
        assert not await kv.ping()
        assert time.perf_counter() - t0 < 1.0
        # the held write's background retries count as puts too
        assert seen[0] == "put" and set(seen) == {"put", "get", "hit"}
        assert [op for op in seen if op != "put"] == ["get", "hit", "hit"]
        # Redis comes back on the same port: writes go there again
        redis_server.start()
        await kv.put("c", b"back", 60)
        assert redis_server.client.get("effgate:c") == b"back"
        assert await kv.get("b") == b"in-memory"  # still found in the fallback
    finally:
        await kv.aclose()


@pytest.mark.anyio
async def test_a_strict_read_tells_unreachable_from_unknown(redis_server: RedisServer) -> None:
    kv = RedisKV(redis_server.url)
    try:
        assert await kv.get("nowhere", strict=True) is None  # Redis answered: unknown
        kv.put_later("mine", b"held here", 60)
        redis_server.kill()
        assert await kv.get("mine", strict=True) == b"held here"  # this process has it
        assert await kv.get("nowhere") is None
        with pytest.raises(KVUnavailable):
            await kv.get("nowhere", strict=True)
    finally:
        await kv.aclose()


@pytest.mark.anyio
async def test_frozen_redis_times_out_into_the_fallback(redis_server: RedisServer) -> None:
    kv = RedisKV(redis_server.url, timeout_s=0.2)
    assert redis_server.proc is not None
    try:
        await kv.put("warm", b"1", 60)  # open the connection first
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.perf_counter()
            await kv.put("k", b"v", 60)
            assert await kv.get("k") == b"v"
            assert time.perf_counter() - t0 < 2.0
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
    finally:
        await kv.aclose()


# -- the gateway on Redis --------------------------------------------------------------------


def feedback(client: httpx.Client, request_id: str) -> int:
    r = client.post("/v1/feedback", json={"request_id": request_id, "accepted": True})
    return r.status_code


def test_gateway_keeps_serving_when_redis_goes_away(
    make_gateway: GatewayFactory, redis_server: RedisServer, small: FakeUpstreamHandle
) -> None:
    gw = make_gateway(redis_url=redis_server.url, feedback_ttl_s=3600)
    with gw.http() as c:
        r = c.post("/v1/chat/completions", json=chat())
        assert r.status_code == 200
        before = r.headers["x-effgate-request-id"]
        wait_until(lambda: redis_server.client.exists(f"effgate:req:{before}"), what="summary")
        assert 3500 < int(redis_server.client.ttl(f"effgate:req:{before}")) <= 3600
        assert feedback(c, before) == 200
        assert redis_server.client.get(f"effgate:fb:{before}") == orjson.dumps([True, None])

        redis_server.kill()
        for stream in (False, True):
            r = c.post("/v1/chat/completions", json=chat(stream=stream))
            assert r.status_code == 200
            after = r.headers["x-effgate-request-id"]
            assert feedback(c, after) == 200, "feedback joins requests served after the loss"
        assert c.get("/readyz").status_code == 200
    assert gw.metric("effgate_outcomes_total", outcome="accepted") == 3
    assert gw.metric("effgate_store_fallbacks_total", op="put") >= 2
    # the summaries and verdicts written meanwhile are held for Redis (and read from there)
    assert gw.metric("effgate_store_buffered_total", store="kv_pending") >= 4


def test_feedback_for_another_replicas_request_says_retry_while_redis_is_away(
    make_gateway: GatewayFactory, redis_server: RedisServer, small: FakeUpstreamHandle
) -> None:
    gw = make_gateway(redis_url=redis_server.url)
    unknown = {"request_id": "req_served_elsewhere", "accepted": True}
    with gw.http() as c:
        r = c.post("/v1/feedback", json=unknown)
        assert r.status_code == 404, "Redis answered: the request is unknown"
        redis_server.kill()
        r = c.post("/v1/feedback", json=unknown)
        # Redis did not answer and this replica did not serve it: not "unknown", but "retry"
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "store_unavailable"
        assert r.json()["error"]["type"] == "server_error"
    counted = {"endpoint": "feedback", "status_class": "5xx", "outcome": "unavailable"}
    wait_until(lambda: gw.metric("effgate_requests_total", **counted) == 1, what="503 counted")
    assert gw.metric("effgate_store_fallbacks_total", op="get") >= 1


def test_rate_limit_is_shared_by_replicas_through_redis(
    make_gateway: GatewayFactory, redis_server: RedisServer, small: FakeUpstreamHandle
) -> None:
    a = make_gateway(redis_url=redis_server.url, rate_limit_rpm=3)
    b = make_gateway(redis_url=redis_server.url, rate_limit_rpm=3)
    clear_of_minute_boundary()
    with a.http() as ca, b.http() as cb:
        codes = [
            ca.post("/v1/chat/completions", json=chat()).status_code,
            cb.post("/v1/chat/completions", json=chat()).status_code,
            ca.post("/v1/chat/completions", json=chat()).status_code,
            cb.post("/v1/chat/completions", json=chat()).status_code,
        ]
    assert codes == [200, 200, 200, 429]


def stream_ids(redis_server: RedisServer) -> list[str]:
    # redis-py's stubs type a sync client's replies as "Awaitable | value" (8.x: "| None")
    entries = cast(
        list[tuple[bytes, dict[bytes, bytes]]], redis_server.client.xrange("effgate:records")
    )
    return [orjson.loads(fields[b"record"])["id"] for _, fields in entries]


def test_records_go_to_the_redis_stream_and_are_replayed_after_an_outage(
    make_gateway: GatewayFactory, redis_server: RedisServer, small: FakeUpstreamHandle
) -> None:
    gw = make_gateway(
        redis_url=redis_server.url, records_redis_stream="effgate:records", redis_retry_max_s=0.2
    )
    with gw.http() as c:
        rid = c.post("/v1/chat/completions", json=chat()).headers["x-effgate-request-id"]
        wait_until(lambda: redis_server.client.xlen("effgate:records") == 1, what="stream entry")
        assert stream_ids(redis_server) == [rid]
        redis_server.kill()
        during = c.post("/v1/chat/completions", json=chat()).headers["x-effgate-request-id"]
        wait_until(
            lambda: gw.metric("effgate_store_buffered_total", store="records_stream") == 1,
            what="the stream write held",
        )
        redis_server.start()  # empty: the test's Redis keeps nothing across a restart
        wait_until(lambda: stream_ids(redis_server) == [during], what="the replay")
        # the entry is in Redis a moment before the writer counts it replayed
        wait_until(
            lambda: gw.metric("effgate_store_replayed_total", store="records_stream") == 1,
            what="the replay counted",
        )
    assert gw.metric("effgate_records_dropped_total", sink="redis") == 0
    assert len(gw.records(at_least=2)) == 2, "the file sink has both"


def test_stream_records_past_the_bound_are_dropped_and_counted(
    make_gateway: GatewayFactory, redis_server: RedisServer, small: FakeUpstreamHandle
) -> None:
    gw = make_gateway(
        redis_url=redis_server.url,
        records_redis_stream="effgate:records",
        records_stream_max_bytes=1,  # nothing can be held: every write Redis refuses is lost
    )
    with gw.http() as c:
        redis_server.kill()
        assert c.post("/v1/chat/completions", json=chat()).status_code == 200
        wait_until(
            lambda: gw.metric("effgate_records_dropped_total", sink="redis") == 1,
            what="the lost stream write counted",
        )
    assert gw.metric("effgate_store_dropped_total", store="records_stream") == 1
    assert len(gw.records(at_least=1)) == 1, "the file sink still has it"
