"""Writes made while Redis is down are held, bounded, counted and replayed when it is back.

A real ``redis-server`` (tests/redis_server.py) is killed under concurrent writes and
started again on the same port (empty: it keeps nothing across the restart, so whatever is in
it afterwards was replayed). Every summary, verdict and stream record written during the
outage must arrive; the metrics must say how many were buffered and replayed; past the byte
bound the oldest are dropped, counted, and still found by the replica that wrote them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import cast

import httpx
import orjson
import pytest

from gateway.kv import ENTRY_OVERHEAD, RedisKV
from tests.fakes.servers import FakeUpstreamHandle
from tests.gateway.conftest import GatewayFactory, chat, wait_until
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis


async def until(check: Callable[[], object], within: float = 10.0, what: str = "it") -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"{what} not reached within {within} s"
        await asyncio.sleep(0.02)


@pytest.mark.anyio
async def test_writes_during_an_outage_are_replayed_after_it(redis_server: RedisServer) -> None:
    kv = RedisKV(redis_server.url, retry_s=0.05, retry_max_s=0.2)
    r = redis_server.client
    try:
        await kv.put("warm", b"1", 60)
        redis_server.kill()

        async def writer(w: int) -> None:
            for i in range(50):
                kv.put_later(f"req:{w}:{i}", orjson.dumps({"w": w, "i": i}), 3600)
                if i % 5 == 0:
                    assert await kv.put_if_absent(f"fb:{w}:{i}", b"[true,null]", 3600)
                    assert not await kv.put_if_absent(f"fb:{w}:{i}", b"[false,null]", 3600)
                await asyncio.sleep(0)

        await asyncio.gather(*(writer(w) for w in range(8)))
        assert await kv.get("req:3:7") == orjson.dumps({"w": 3, "i": 7})  # read while down
        await until(lambda: kv.store_stats()[0].buffered == 8 * 60, what="every write held")
        held = kv.store_stats()[0]
        assert held.entries == 8 * 60 and held.replayed == 0 and held.dropped == 0
        redis_server.start()
        await until(lambda: kv.store_stats()[0].entries == 0, what="the replay")
        stats = kv.store_stats()[0]
        assert (stats.buffered, stats.replayed, stats.dropped, stats.bytes) == (480, 480, 0, 0)
        for w in range(8):
            for i in range(50):
                assert r.get(f"effgate:req:{w}:{i}") == orjson.dumps({"w": w, "i": i})
                if i % 5 == 0:
                    assert r.get(f"effgate:fb:{w}:{i}") == b"[true,null]"
        # the TTL left is what was asked, less the outage
        assert 3500 < int(r.ttl("effgate:req:0:0")) <= 3600
    finally:
        await kv.aclose()


@pytest.mark.anyio
async def test_a_replayed_verdict_does_not_overwrite_one_stored_meanwhile(
    redis_server: RedisServer,
) -> None:
    kv = RedisKV(redis_server.url, retry_s=1.0, retry_max_s=1.0)
    try:
        await kv.put("warm", b"1", 60)
        redis_server.kill()
        assert await kv.put_if_absent("fb:x", b"ours", 60)  # held, replayed with SET NX
        await until(lambda: kv.store_stats()[0].buffered == 1, what="held")
        redis_server.start()  # within the second before the flusher's retry
        redis_server.client.set("effgate:fb:x", b"another replica's", ex=60)
        await until(lambda: kv.store_stats()[0].entries == 0, what="the replay")
        assert redis_server.client.get("effgate:fb:x") == b"another replica's"
    finally:
        await kv.aclose()


@pytest.mark.anyio
async def test_past_the_byte_bound_the_oldest_are_dropped_and_kept_locally(
    redis_server: RedisServer,
) -> None:
    entry = len("req:000") + 100 + ENTRY_OVERHEAD
    kv = RedisKV(redis_server.url, pending_max_bytes=10 * entry, retry_s=0.05, retry_max_s=0.2)
    try:
        await kv.put("warm", b"1", 60)
        redis_server.kill()
        for i in range(30):
            kv.put_later(f"req:{i:03d}", bytes([i]) * 100, 3600)
            assert kv.store_stats()[0].bytes <= 10 * entry
        await until(lambda: kv.store_stats()[0].buffered >= 10, what="held")
        pending, local = kv.store_stats()
        assert (pending.entries, pending.dropped) == (10, 20)
        assert local.name == "kv_local" and local.entries == 20
        assert await kv.get("req:000") == bytes([0]) * 100, "dropped from the replay, not lost here"
        redis_server.start()
        await until(lambda: kv.store_stats()[0].entries == 0, what="the replay")
        assert kv.store_stats()[0].replayed == 10
        assert redis_server.client.get("effgate:req:029") == bytes([29]) * 100
        assert redis_server.client.get("effgate:req:019") is None  # dropped: never replayed
    finally:
        await kv.aclose()


@pytest.mark.anyio
async def test_a_frozen_redis_never_holds_a_call_past_the_timeout(
    redis_server: RedisServer,
) -> None:
    kv = RedisKV(redis_server.url, timeout_s=0.2)
    assert redis_server.proc is not None
    try:
        await kv.put("warm", b"1", 60)
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            calls = {
                "put": kv.put("k", b"v", 60),
                "get": kv.get("other"),
                "put_if_absent": kv.put_if_absent("fb:1", b"v", 60),
                "hit": kv.hit("t", 60),
                "add": kv.add("s", 1.0, 60),
                "ping": kv.ping(),
            }
            for name, call in calls.items():
                t0 = time.perf_counter()
                await call
                assert time.perf_counter() - t0 < 0.2 + 0.15, name
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        await until(lambda: kv.store_stats()[0].entries == 0, what="the held writes replayed")
        assert redis_server.client.get("effgate:k") == b"v"
    finally:
        await kv.aclose()


# -- the gateway -------------------------------------------------------------------------------


def test_the_gateway_loses_nothing_written_during_a_redis_outage(
    make_gateway: GatewayFactory, redis_server: RedisServer, small: FakeUpstreamHandle
) -> None:
    gw = make_gateway(
        redis_url=redis_server.url,
        records_redis_stream="effgate:records",
        redis_retry_max_s=0.2,
        feedback_ttl_s=3600,
    )
    done: list[tuple[float, str, int]] = []  # (when the request started, its id, feedback status)
    stop = threading.Event()
    errors: list[str] = []

    def client_loop() -> None:
        with httpx.Client(base_url=gw.base_url, timeout=10) as c:
            while not stop.is_set():
                t = time.monotonic()
                r = c.post("/v1/chat/completions", json=chat(stream=len(done) % 3 == 0))
                rid = r.headers["x-effgate-request-id"]
                f = c.post("/v1/feedback", json={"request_id": rid, "accepted": True})
                if r.status_code != 200:
                    errors.append(f"chat {r.status_code}")
                done.append((t, rid, f.status_code))

    threads = [threading.Thread(target=client_loop) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(done) >= 8, 10, "traffic")
        redis_server.kill()  # under load: writes in flight fail
        killed, n = time.monotonic(), len(done)
        wait_until(lambda: len(done) >= n + 40, 20, "traffic during the outage")
        redis_server.start()  # empty: what it holds afterwards was written since
        started, n = time.monotonic(), len(done)
        wait_until(lambda: len(done) >= n + 8, 20, "traffic after")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors, errors[:5]
    # requests that started while Redis was down, so everything they wrote was held
    during = [rid for t, rid, _ in done if killed < t < started]
    assert len(during) >= 30
    assert all(status == 200 for t, _, status in done if t > killed), "feedback found them all"
    r = redis_server.client

    def arrived() -> bool:
        return all(
            r.exists(f"effgate:req:{rid}") and r.exists(f"effgate:fb:{rid}") for rid in during
        )

    wait_until(arrived, 10, "every summary and verdict written during the outage in Redis")
    for rid in during[:5]:
        summary = orjson.loads(r.get(f"effgate:req:{rid}"))  # type: ignore[arg-type]
        assert set(summary) <= {"route", "model", "tenant", "p"}
        assert 3500 < int(r.ttl(f"effgate:req:{rid}")) <= 3600
        assert r.get(f"effgate:fb:{rid}") == orjson.dumps([True, None])

    def streamed() -> set[tuple[str, str]]:
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], r.xrange("effgate:records"))
        out = set()
        for _, fields in entries:
            rec = orjson.loads(fields[b"record"])
            out.add((rec["type"], rec.get("id") or rec.get("request_id")))
        return out

    want = {("request", rid) for rid in during} | {("feedback", rid) for rid in during}
    wait_until(lambda: want <= streamed(), 10, "every record written during the outage")
    assert gw.metric("effgate_store_buffered_total", store="kv_pending") > 0
    assert gw.metric("effgate_store_buffered_total", store="records_stream") > 0
    wait_until(
        lambda: (
            gw.metric("effgate_store_replayed_total", store="kv_pending")
            == gw.metric("effgate_store_buffered_total", store="kv_pending")
        ),
        5,
        "kv replayed == buffered",
    )
    assert gw.metric("effgate_store_replayed_total", store="records_stream") == gw.metric(
        "effgate_store_buffered_total", store="records_stream"
    )
    assert gw.metric("effgate_store_dropped_total") == 0
    assert gw.metric("effgate_records_dropped_total") == 0
    assert gw.metric("effgate_store_bytes", store="kv_pending") == 0
    assert gw.metric("effgate_store_bytes", store="records_stream") == 0
