"""``put_if_absent``: of verdicts racing in for one request, exactly one is the first."""

from __future__ import annotations

import asyncio

import pytest

from gateway.kv import MemoryKV, RedisKV
from tests.gateway.conftest import GatewayFactory, chat
from tests.redis_server import RedisServer


@pytest.mark.anyio
async def test_memory_put_if_absent_once_and_after_expiry() -> None:
    clock = [100.0]
    kv = MemoryKV(clock=lambda: clock[0])
    results = await asyncio.gather(*(kv.put_if_absent("fb:1", b"v", 10) for _ in range(20)))
    assert results.count(True) == 1
    clock[0] += 11
    assert await kv.put_if_absent("fb:1", b"w", 10)
    assert await kv.get("fb:1") == b"w"


@pytest.mark.anyio
@pytest.mark.redis
async def test_redis_put_if_absent_is_shared_by_replicas(
    redis_server: RedisServer,
) -> None:
    a, b = RedisKV(redis_server.url), RedisKV(redis_server.url)
    try:
        results = await asyncio.gather(
            *(kv.put_if_absent("fb:race", b"v", 60) for kv in (a, b) for _ in range(10))
        )
        assert results.count(True) == 1
        assert 50 <= int(redis_server.client.ttl("effgate:fb:race")) <= 60
    finally:
        await a.aclose()
        await b.aclose()


def test_concurrent_first_verdicts_count_once(make_gateway: GatewayFactory) -> None:
    gw = make_gateway()
    with gw.http() as c:
        rid = c.post("/v1/chat/completions", json=chat()).headers["x-effgate-request-id"]

    async def send_all() -> list[int]:
        import httpx

        async with httpx.AsyncClient(base_url=gw.base_url) as ac:
            rs = await asyncio.gather(
                *(
                    ac.post("/v1/feedback", json={"request_id": rid, "accepted": i % 2 == 0})
                    for i in range(10)
                )
            )
        return [r.status_code for r in rs]

    assert asyncio.run(send_all()) == [200] * 10
    total = gw.metric("effgate_outcomes_total", outcome="accepted") + gw.metric(
        "effgate_outcomes_total", outcome="rejected"
    )
    assert total == 1
