"""Redis beyond one node: a real Redis Cluster (three masters) and a real Sentinel setup.

The tests start them on loopback (tests/redis_server.py): three ``redis-server
--cluster-enabled yes`` joined by ``redis-cli --cluster create``, and a master, its replica
and one sentinel (``redis-server --sentinel``, quorum 1). Through ``redis+cluster://`` and
``redis+sentinel://`` URLs (gateway.redis_client) they check the KV, the budgets Ledger
with tenants spread over the cluster's slots, the record stream, a gateway serving chats and
feedback, a Sentinel failover the client follows, and the bounded fallback when nothing
answers. CI installs ``redis-server``; where it is missing these tests fail (never skip).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.crc import key_slot

from gateway.budgets import Ledger
from gateway.errors import BudgetExceeded, RateLimited
from gateway.kv import RedisKV
from gateway.records import RecordLog
from gateway.redis_client import connect
from gateway.tenants import Tenant, digest, new_key
from tests.fakes.servers import FakeUpstreamHandle
from tests.gateway.conftest import GatewayFactory, chat, closed_port, wait_until
from tests.redis_server import ClusterServers, SentinelServers

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterServers]:
    servers = ClusterServers(tmp_path_factory.mktemp("cluster"))
    try:
        servers.start()
        yield servers
    finally:
        servers.close()


@pytest.fixture
def flushed(cluster: ClusterServers) -> ClusterServers:
    for node in cluster.nodes:
        node.client.flushall()
    return cluster


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[SentinelServers]:
    servers = SentinelServers(tmp_path)
    try:
        servers.start()
        yield servers
    finally:
        servers.close()


@pytest.fixture
async def clients() -> AsyncIterator[list[Any]]:
    made: list[Any] = []
    yield made
    for client in made:
        await client.aclose()


def tenants_over_nodes(cluster: ClusterServers, per_node: int = 2) -> list[Tenant]:
    """Tenants whose hash tags land on every master, ``per_node`` each."""
    owner: dict[int, int] = {}  # slot range start -> port, from CLUSTER SLOTS
    for start, end, (_, port, *_rest), *_ in cast(Any, cluster.nodes[0].client).execute_command(
        "CLUSTER", "SLOTS"
    ):
        for slot in range(start, end + 1):
            owner[slot] = port
    picked: dict[int, list[Tenant]] = {}
    i = 0
    while any(len(picked.get(n.port, [])) < per_node for n in cluster.nodes):
        name = f"team{i}"
        port = owner[key_slot(f"{{t:{name}}}".encode())]
        if len(picked.setdefault(port, [])) < per_node:
            picked[port].append(Tenant(name, usd_per_day=1.0, rpm=50, tracked=True))
        i += 1
    return [t for ts in picked.values() for t in ts]


# -- URL forms ------------------------------------------------------------------------------


def test_url_forms_build_the_right_client() -> None:
    one = connect("redis://:pw@127.0.0.1:6390/2", 0.25)
    kw = one.connection_pool.connection_kwargs
    assert (kw["port"], kw["db"], kw["password"], kw["socket_timeout"]) == (6390, 2, "pw", 0.25)
    assert kw["socket_connect_timeout"] == 0.25
    unix = connect("unix:///tmp/redis.sock?db=1", 0.5)
    assert unix.connection_pool.connection_kwargs["path"] == "/tmp/redis.sock"

    cl = connect("redis+cluster://:secret@127.0.0.1:7001,[::1]:7002", 0.3)
    assert isinstance(cl, RedisCluster)
    assert [(n.host, n.port) for n in cl.nodes_manager.startup_nodes.values()] == [
        ("127.0.0.1", 7001),
        ("::1", 7002),
    ]
    assert cl.connection_kwargs["password"] == "secret"
    assert cl.connection_kwargs["socket_timeout"] == 0.3
    with pytest.raises(ValueError, match="db 0"):
        connect("redis+cluster://127.0.0.1:7001/3", 0.3)

    se = connect("redis+sentinel://:pw@h1:26379,h2:26380/mymaster/4?sentinel_password=sp", 0.2)
    pool = se.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "mymaster"
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (4, "pw")
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26380]
    assert sentinels[0].connection_pool.connection_kwargs["password"] == "sp"
    assert sentinels[0].connection_pool.connection_kwargs["socket_timeout"] == 0.2
    with pytest.raises(ValueError, match="service"):
        connect("redis+sentinel://h1:26379", 0.2)


# -- Cluster --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_kv_on_a_cluster(flushed: ClusterServers) -> None:
    seen: list[str] = []
    # a loaded machine's timeout: this checks the commands work on a cluster, not latency
    kv = RedisKV(flushed.url, timeout_s=1.0, on_fallback=seen.append)
    try:
        await kv.put("req:1", b"summary", 120)
        assert await kv.get("req:1") == b"summary"
        assert await kv.get("req:missing") is None
        assert await kv.put_if_absent("once", b"a", 60) is True
        assert await kv.put_if_absent("once", b"b", 60) is False
        window = int(time.time() // 3600)
        counts = [await kv.hit("tenant:t", 3600) for _ in range(3)]
        if int(time.time() // 3600) == window:  # else an hour began mid-way: a new window
            assert counts == [1, 2, 3]
        assert await kv.add("cost:day", 0.25, 600) == pytest.approx(0.25)
        assert await kv.add("cost:day", 0.5, 600) == pytest.approx(0.75)
        for i in range(60):  # one pipeline of SETs over many slots (non-transactional)
            kv.put_later(f"late:{i}", b"s%d" % i, 120)
        await asyncio.sleep(0.2)
        assert [await kv.get(f"late:{i}") for i in (0, 29, 59)] == [b"s0", b"s29", b"s59"]
        assert await kv.ping()
    finally:
        await kv.aclose()
    assert seen == [], "no operation fell back to memory"
    held = flushed.keys("effgate:late:*")
    assert sum(len(v) for v in held.values()) == 60
    assert all(held.values()), "the keys are spread over all three masters"


@pytest.mark.anyio
async def test_ledger_on_a_cluster_with_tenants_on_every_master(
    flushed: ClusterServers, clients: list[Any]
) -> None:
    tenants = tenants_over_nodes(flushed)
    # two replicas, each its own cluster client; a generous timeout: this checks atomicity
    # on a cluster, not latency on a shared CI box (96 reserves at once open ~100 sockets)
    a, b = (connect(flushed.url, 1.0) for _ in range(2))
    clients += [a, b]
    la, lb = Ledger(a, timeout_s=1.0), Ledger(b, timeout_s=1.0)
    for led in (la, lb):  # warm: the client reads the slots map, the scripts get loaded
        warm = await led.reserve(Tenant("warm", rpm=1000), 0.0, 0)
        assert warm is not None and warm.shared
        led.settle(warm, 0.0, 0)

    async def attempt(led: Ledger, t: Tenant) -> Any:
        try:
            return await led.reserve(t, 0.1, 10)
        except (BudgetExceeded, RateLimited) as exc:
            return exc

    results = await asyncio.gather(
        *(attempt(led, t) for t in tenants for led in (la, lb) for _ in range(8))
    )
    for i, t in enumerate(tenants):
        mine = results[i * 16 : (i + 1) * 16]
        holds = [r for r in mine if not isinstance(r, Exception)]
        assert len(holds) == 10, t.name  # 1.0 USD over worst cases of 0.1, across replicas
        assert all(h.shared for h in holds)
        assert sum(isinstance(r, BudgetExceeded) for r in mine) == 6
        for j, hold in enumerate(holds):
            (la if j % 2 else lb).settle(hold, 0.05, 5)
    await la.aclose()
    await lb.aclose()
    assert la.counters.store_errors == {} and lb.counters.store_errors == {}
    for t in tenants:
        usage = await Ledger(a).usage(t)
        assert usage["source"] == "shared"
        assert usage["usd_day"]["spent"] == pytest.approx(0.5) and usage["usd_day"]["held"] == 0
        assert usage["rpm"]["spent"] + usage["rpm"]["held"] >= 10
    held = flushed.keys("effgate:{t:*")
    assert all(held.values()), "tenants' meters live on every master"
    # each tenant's keys (meters, holds, deadlines) on one node: no tag on two nodes
    tags_per_node = [{k.split(b"}")[0] for k in keys} for keys in held.values()]
    assert sum(len(s) for s in tags_per_node) == len(set().union(*tags_per_node))
    assert len(set().union(*tags_per_node)) == len(tenants) + 1  # and "warm"


@pytest.mark.anyio
async def test_record_stream_on_a_cluster(flushed: ClusterServers, clients: list[Any]) -> None:
    client = connect(flushed.url, 0.25)
    clients.append(client)
    log = RecordLog(file=None, redis=client, stream="effgate:records")
    log.start()
    for i in range(25):
        log.emit({"id": f"r{i}"})
    await log.aclose()
    assert log.dropped == 0
    assert await client.xlen("effgate:records") == 25


def test_gateway_on_a_cluster_serves_meters_and_joins_feedback(
    make_gateway: GatewayFactory,
    flushed: ClusterServers,
    small: FakeUpstreamHandle,
    tmp_path: Path,
) -> None:
    key = new_key()
    tenants = {
        "version": 1,
        "tenants": [
            {
                "name": "clustered",
                "keys_sha256": [digest(key)],
                "budget": {"usd_per_day": 5.0},
                "limits": {"rpm": 100},
            }
        ],
    }
    (tmp_path / "tenants.yaml").write_text(yaml.safe_dump(tenants))
    # a loaded machine's Redis timeout: this checks joins and meters, not latency
    shared = {"redis_url": flushed.url, "redis_timeout_s": 1.0}
    a = make_gateway(
        **shared, records_redis_stream="effgate:records", tenants_path=tmp_path / "tenants.yaml"
    )
    b = make_gateway(**shared, tenants_path=tmp_path / "tenants.yaml")
    auth = {"authorization": f"Bearer {key}"}
    with a.http(headers=auth) as ca, b.http(headers=auth) as cb:
        ids = []
        for stream in (False, True, False):
            r = ca.post("/v1/chat/completions", json=chat(stream=stream))
            assert r.status_code == 200
            ids.append(r.headers["x-effgate-request-id"])
        for rid in ids:  # served by a, joined through the cluster by b
            fb = {"request_id": rid, "accepted": True}
            assert cb.post("/v1/feedback", json=fb).status_code == 200
        me = cb.get("/v1/tenants/me").json()
        assert me["usage"]["source"] == "shared"
        assert me["usage"]["rpm"]["spent"] == 3 and me["usage"]["usd_day"]["spent"] > 0
    where = flushed.keys("effgate:records")
    owner = [n for n in flushed.nodes if where[n.port]]
    assert len(owner) == 1
    wait_until(lambda: owner[0].client.xlen("effgate:records") == 3, what="three stream entries")
    for gw in (a, b):
        assert gw.metric("effgate_store_fallbacks_total") == 0
        assert gw.metric("effgate_records_dropped_total") == 0
    assert b.metric("effgate_outcomes_total", outcome="accepted") == 3


@pytest.mark.anyio
async def test_unreachable_cluster_falls_back_within_a_bounded_wait() -> None:
    seen: list[str] = []
    url = f"redis+cluster://127.0.0.1:{closed_port()}"
    kv = RedisKV(url, on_fallback=seen.append)
    ledger = Ledger(kv.client)
    try:
        t0 = time.perf_counter()
        await kv.put("a", b"memory", 60)
        assert await kv.get("a") == b"memory"
        assert await kv.hit("t", 60) == 1
        hold = await ledger.reserve(Tenant("t", usd_per_day=1.0), 0.1, 0)
        assert hold is not None and not hold.shared and ledger.degraded
        assert time.perf_counter() - t0 < 2.0
        # redis-py raises RedisClusterException (not a RedisError) here: read as a failure
        # (the get is answered from the write held locally, so it needs no fallback)
        assert {"put", "hit"} <= set(seen) and set(seen) <= {"put", "get", "hit"}
    finally:
        await kv.aclose()


# -- Sentinel -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_kv_and_ledger_through_sentinel_follow_a_failover(
    sentinel: SentinelServers, clients: list[Any]
) -> None:
    seen: list[str] = []
    kv = RedisKV(sentinel.url, on_fallback=seen.append)
    client = connect(sentinel.url, 0.25)
    clients.append(client)
    ledger = Ledger(client)
    team = Tenant("team", usd_per_day=1.0, tracked=True)
    try:
        await kv.put("req:1", b"summary", 120)
        assert await kv.get("req:1") == b"summary"
        assert await kv.put_if_absent("once", b"a", 60) is True
        assert await kv.add("cost", 0.5, 600) == pytest.approx(0.5)
        hold = await ledger.reserve(team, 0.4, 0)
        assert hold is not None and hold.shared
        ledger.settle(hold, 0.3, 0)
        await asyncio.sleep(0.05)
        assert sentinel.master.client.get("effgate:req:1") == b"summary"
        assert seen == []
        wait_until(lambda: sentinel.replica.client.get("effgate:req:1") == b"summary", 5)

        old = sentinel.master_port()
        sentinel.master.kill()
        # the sentinel sees the master down (500 ms), then promotes the replica
        wait_until(lambda: sentinel.master_port() == sentinel.replica.port, 20, "failover")
        assert old != sentinel.replica.port

        async def written() -> bool:
            await kv.put("req:2", b"after", 120)
            return sentinel.replica.client.get("effgate:req:2") == b"after"

        deadline = time.monotonic() + 10
        while not await written():  # the promoted replica accepts writes soon after
            assert time.monotonic() < deadline, "writes never reached the new master"
            await asyncio.sleep(0.1)
        assert await kv.get("req:1") == b"summary", "replicated before the failover"
        usage = await ledger.usage(team)  # the ledger's client follows the new master too
        assert usage["source"] == "shared"
        assert usage["usd_day"]["spent"] == pytest.approx(0.3)
    finally:
        await kv.aclose()
