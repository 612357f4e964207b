"""``effgate serve`` as a real process for the connection and shutdown tests.

    with serve_process(tmp_path, small, big, EFFGATE_HEADER_TIMEOUT_S="1") as gw:
        httpx.get(gw.origin + "/healthz")
        gw.proc.send_signal(signal.SIGTERM)

The policy is the test policy (models small and big on the session fakes, route ``auto``
without a quality bar) with long upstream deadlines, so a test can hold a request open with
a fault marker for seconds. Records go to ``tmp_path/records``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

from tests.fakes.servers import FakeUpstreamHandle
from tests.gateway.conftest import complete_lines, policy_dict, wait_until

ROOT = Path(__file__).resolve().parents[2]
SLOW_OK = {"connect_s": 5.0, "first_byte_s": 30.0, "idle_s": 30.0, "total_s": 60.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@dataclass
class ServeProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    records_dir: Path

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def records(self) -> list[dict[str, Any]]:
        path = self.records_dir / "records.jsonl"
        if not path.exists():
            return []
        return [orjson.loads(line) for line in complete_lines(path.read_bytes())]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def serve_process(
    tmp_path: Path,
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
    *,
    policy: dict[str, Any] | None = None,
    **env: str,
) -> Iterator[ServeProcess]:
    """Start ``effgate serve`` with ``EFFGATE_*`` overrides ``env``; killed if still running.
    ``policy`` replaces the test policy (a ``policy_dict``) when given."""
    policy = policy or policy_dict(
        small.base_url,
        big.base_url,
        small={"timeouts": SLOW_OK},
        big={"timeouts": SLOW_OK},
        routes=[{"name": "auto", "candidates": ["small", "big"]}],
    )
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    port = _free_port()
    full_env = {
        **os.environ,
        "EFFGATE_HOST": "127.0.0.1",
        "EFFGATE_PORT": str(port),
        "EFFGATE_RECORDS_DIR": str(tmp_path / "records"),
        "EFFGATE_POLICY_POLL_S": "3600",
        "EFFGATE_LOG_LEVEL": "warning",
        # this checkout's code, whatever the installed console script points at
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        **env,
    }
    full_env.pop("EFFGATE_REDIS_URL", None)
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--policy", str(path)],
            env=full_env,
            stdout=log,
            stderr=log,
            cwd=ROOT,
        )
    served = ServeProcess(proc, port, log_path, tmp_path / "records")

    def ready() -> bool:
        assert proc.poll() is None, served.log_text()
        try:
            return httpx.get(served.origin + "/readyz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, 60, "effgate serve ready")
        yield served
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
