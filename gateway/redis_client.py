"""Build the ``redis.asyncio`` client for ``EFFGATE_REDIS_URL``: one node, Sentinel or Cluster.

URL forms (``[user:]password@`` is optional everywhere; ``rediss`` means TLS):

    redis://host:6379/0  rediss://host:6380/0  unix:///run/redis.sock?db=0
        one Redis node (``redis.asyncio.from_url``)
    redis+sentinel://[:password@]host1:26379,host2:26379/<service_name>[/<db>]
        ask the sentinels where ``service_name``'s master is (``Sentinel.master_for``);
        the password is the master's; ``?sentinel_password=...`` authenticates to the
        sentinels when they need it. ``rediss+sentinel://`` speaks TLS to the master.
    redis+cluster://[:password@]host1:6379,host2:6379
        a Redis Cluster (``RedisCluster``) discovered from any of these seed nodes; db 0 only

Every client has bounded socket and connect timeouts (``timeout_s``) and no retry on
timeout: a slow or absent Redis costs one bounded wait per call, then the callers fall back
(gateway.kv, gateway.budgets). On a cluster, what must be atomic stays on one slot: the
budget scripts' keys share the tenant's hash tag ``{t:<tenant>}`` and every other
multi-command step (a MULTI of INCR and EXPIRE, of INCRBYFLOAT and EXPIRE) touches one key.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote

import redis.asyncio as redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, RedisClusterException

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


def connect(url: str, timeout_s: float) -> Any:
    """A ``redis.asyncio`` client for ``url`` (no connection is opened until first used)."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    timeouts: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
    }
    if not sep or scheme not in SENTINEL_SCHEMES + CLUSTER_SCHEMES:
        # one immediate retry on a fresh connection: after Redis restarts each pooled
        # connection fails once; the callers' asyncio.timeout bounds the call, retry included
        return redis.from_url(url, retry_on_timeout=False, retry=Retry(NoBackoff(), 1), **timeouts)
    user, password, hosts, path, query = _split(rest)
    auth: dict[str, Any] = {"username": user, "password": password}
    tls = scheme.startswith("rediss")
    if scheme in CLUSTER_SCHEMES:
        if path.strip("/") not in ("", "0"):
            raise ValueError(f"a Redis Cluster has only db 0, not {path.strip('/')!r}")
        return _cluster(hosts, tls=tls, **auth, **timeouts)
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 2:
        raise ValueError(
            "a sentinel URL names the service: redis+sentinel://host:26379/<service_name>[/<db>]"
        )
    # one retry, no backoff (redis-py's default is ten with backoff): a dead sentinel or
    # master must cost a bounded wait, then the callers' fallback
    timeouts["retry"] = Retry(NoBackoff(), 1)
    sentinel_kwargs = dict(timeouts)
    if "sentinel_password" in query:
        sentinel_kwargs["password"] = query["sentinel_password"][-1]
    sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    return sentinel.master_for(
        parts[0],
        redis_class=_SentinelMaster,
        db=int(parts[1]) if len(parts) == 2 else 0,
        ssl=tls,
        **auth,
        **timeouts,
    )


def _split(rest: str) -> tuple[str | None, str | None, list[tuple[str, int]], str, dict[str, Any]]:
    """``[user:password@]h1:p1,h2:p2/path?query`` -> user, password, hosts, path, query."""
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    user = password = None
    if at:
        name, colon, secret = userinfo.partition(":")
        user = unquote(name) or None
        password = unquote(secret) if colon else None
    hosts: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        if not item:
            continue
        if item.startswith("["):  # [::1]:26379
            host, _, port = item[1:].partition("]")
            port = port.lstrip(":")
        else:
            host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
        hosts.append((host, int(port) if port else 0))
    if not hosts:
        raise ValueError("a sentinel or cluster URL names at least one host:port")
    return user, password, hosts, slash + path, parse_qs(query)


class _SentinelMaster(redis.Redis):
    """The master's client; closing it also closes the connections to the sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        pool: Any = self.connection_pool  # a SentinelConnectionPool
        for sentinel in pool.sentinel_manager.sentinels:
            await sentinel.aclose()


class _Cluster(RedisCluster):
    """A cluster that reads as unreachable (``ConnectionError``, a ``RedisError``) when no
    seed node answers: redis-py raises ``RedisClusterException`` there, which is not one,
    and the callers' fallbacks catch ``RedisError``."""

    async def initialize(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().initialize(*args, **kwargs)
        except RedisClusterException as exc:
            raise ConnectionError(str(exc)) from exc


def _cluster(hosts: list[tuple[str, int]], *, tls: bool, **kwargs: Any) -> Any:
    nodes = [ClusterNode(host, port or 6379) for host, port in hosts]
    return _Cluster(
        startup_nodes=nodes,
        ssl=tls,
        # one retry (after re-reading the slots: a failover moved them), not redis-py's ten
        # with backoff: a dead node must cost a bounded wait, then the caller's fallback
        retry=Retry(NoBackoff(), 1),
        # per node; past it redis-py raises instead of waiting (default 100): as unbounded as
        # a one-node client's pool, so a burst of requests never reads as Redis failing
        max_connections=2**31,
        **kwargs,
    )
