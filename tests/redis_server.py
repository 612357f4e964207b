"""A real ``redis-server`` on a free loopback port, for tests: start, kill, start again.

CI installs ``redis-server``; where it is missing the tests that use it fail (never skip).
The ``redis_server`` fixture is registered for tests/gateway by its conftest.

``ClusterServers`` runs a Redis Cluster of three masters (``redis-cli --cluster create``);
``SentinelServers`` a master, a replica and one sentinel (``redis-server --sentinel``, the
same binary: Debian's ``redis-sentinel`` is only a link to it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1; ``kill`` and ``start`` again on the port."""

    def __init__(self, binary: str, *, port: int = 0, extra: tuple[str, ...] = ()) -> None:
        self.binary = binary
        self.extra = extra  # more redis-server arguments (cluster mode, replicaof)
        if not port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.port: int = port
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no", *self.extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

        def up() -> bool:
            try:
                return bool(self.client.ping())
            except redis.ConnectionError:
                return False

        _wait(up, self.proc, f"redis-server on port {self.port} did not answer PING")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.client.connection_pool.disconnect()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # in case a test left it frozen
            self.kill()
        self.client.close()


def _wait(check: Callable[[], bool], proc: subprocess.Popen[bytes] | None, what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():
        if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
            raise RuntimeError(what)
        time.sleep(0.02)


def _binaries() -> tuple[str, str]:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        pytest.fail("redis-server is not installed: install it (apt-get install redis-server)")
    return server, cli


def _port_pair() -> tuple[int, int]:
    """A port and its cluster bus port, both free now, below the ephemeral range."""
    from benchmarks.procs import free_port

    while True:
        port, bus = free_port(), free_port()
        if port != bus:
            return port, bus


class ClusterServers:
    """A Redis Cluster of ``masters`` masters and no replicas on loopback (no persistence)."""

    def __init__(self, tmp: Path, masters: int = 3) -> None:
        server, self.cli = _binaries()
        self.nodes: list[RedisServer] = []
        for _ in range(masters):
            port, bus = _port_pair()
            conf = tmp / f"nodes-{port}.conf"
            extra: tuple[str, ...] = (
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(conf),
            )
            extra += ("--cluster-port", str(bus), "--cluster-node-timeout", "2000")
            self.nodes.append(RedisServer(server, port=port, extra=(*extra, "--dir", str(tmp))))
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        self.url = f"redis+cluster://{hosts}"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [self.cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes)]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=30,
        )

        def ok() -> bool:
            infos = [
                str(cast(Any, n.client).execute_command("CLUSTER", "INFO")) for n in self.nodes
            ]
            return all("cluster_state:ok" in info for info in infos)

        _wait(ok, None, "the cluster did not reach cluster_state:ok")

    def keys(self, pattern: str = "*") -> dict[int, list[bytes]]:
        """Each node's port -> the keys it holds (matching ``pattern``)."""
        return {n.port: sorted(n.client.scan_iter(match=pattern)) for n in self.nodes}

    def close(self) -> None:
        for node in self.nodes:
            node.close()


class SentinelServers:
    """A master, a replica of it and one sentinel watching it as ``effgate`` (quorum 1)."""

    SERVICE = "effgate"

    def __init__(self, tmp: Path) -> None:
        server, _ = _binaries()
        self.binary = server
        # --dir: a replica's full sync writes an RDB file there
        self.master = RedisServer(server, extra=("--dir", str(tmp)))
        replicaof = ("--replicaof", "127.0.0.1", str(self.master.port))
        self.replica = RedisServer(server, extra=(*replicaof, "--dir", str(tmp)))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.sentinel_port: int = s.getsockname()[1]
        self.conf = tmp / "sentinel.conf"
        self.conf.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {tmp}\n"
            f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.SERVICE} 500\n"
            f"sentinel failover-timeout {self.SERVICE} 5000\n"
        )
        self.url = f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.SERVICE}/0"
        self.sentinel = redis.Redis(host="127.0.0.1", port=self.sentinel_port, socket_timeout=2)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.master.start()
        self.replica.start()

        def linked() -> bool:
            info = self.master.client.info("replication")
            return bool(info.get("connected_slaves") == 1 and info["slave0"]["state"] == "online")

        _wait(linked, None, "the replica did not link to the master")
        self.proc = subprocess.Popen(
            [self.binary, str(self.conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

        def watching() -> bool:
            try:
                masters = cast(dict[str, dict[str, Any]], self.sentinel.sentinel_masters())
                return bool(masters.get(self.SERVICE, {}).get("num-slaves"))
            except redis.ConnectionError:
                return False

        _wait(watching, self.proc, "the sentinel does not watch the master and its replica")

    def master_port(self) -> int:
        addr = cast(tuple[str, int], self.sentinel.sentinel_get_master_addr_by_name(self.SERVICE))
        return int(addr[1])

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.sentinel.close()
        self.replica.close()
        self.master.close()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    binary, _ = _binaries()
    server = RedisServer(binary)
    server.start()
    try:
        yield server
    finally:
        server.close()
