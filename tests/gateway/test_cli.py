"""The ``effgate`` command: help and exit codes in process, ``effgate serve`` as a real process.

The serve test runs the installed console script with ``EFFGATE_*`` settings and the demo
policy pointed at the fake upstreams, so it also loads the shipped difficulty estimator.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from gateway.cli import main
from tests.fakes.servers import FakeUpstreamHandle
from tests.gateway.conftest import chat, wait_until

DEMO = Path(__file__).resolve().parents[2] / "policies" / "examples" / "demo.yaml"


def effgate() -> str:
    path = shutil.which("effgate")
    if path is None:
        pytest.fail("the effgate console script is not installed: pip install -e .")
    return path


def test_help_from_the_console_script() -> None:
    out = subprocess.run([effgate(), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert out.stdout.startswith("usage: effgate <command>")
    for command in ("serve", "fake-upstream", "policy check", "train", "eval", "report"):
        assert command in out.stdout


@pytest.mark.parametrize("argv", [["-h"], ["help"]])
def test_help_aliases(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    assert "usage: effgate" in capsys.readouterr().out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: effgate" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["bogus"], ["policy"], ["policy", "lint"], ["Serve"]])
def test_unknown_command_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "unknown command" in err and "usage: effgate" in err


def test_serve_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--policy" in out and "--port" in out


def test_serve_with_a_missing_policy_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--policy", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "nope.yaml" in err and "No such file" in err


# -- effgate serve ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def demo_policy(small: FakeUpstreamHandle, big: FakeUpstreamHandle) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(DEMO.read_text())
    urls = {"small": small.base_url, "big": big.base_url}
    for model in data["models"]:
        model["base_url"] = urls[model["id"]]
    return data


def wait_ready(proc: subprocess.Popen[bytes], origin: str, log: Path) -> None:
    """Until the process answers /readyz; fails with its log if it exits first."""

    def ready() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(origin + "/readyz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ready, 60, f"{log.stem} ready")


@pytest.fixture
def served(
    tmp_path: Path, small: FakeUpstreamHandle, big: FakeUpstreamHandle
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(demo_policy(small, big), sort_keys=False))
    port = free_port()
    env = {
        **os.environ,
        "EFFGATE_HOST": "127.0.0.1",
        "EFFGATE_PORT": str(port),
        "EFFGATE_RECORDS_DIR": str(tmp_path / "records"),
        "EFFGATE_POLICY_POLL_S": "3600",  # only SIGHUP reloads in this test
        "EFFGATE_LOG_LEVEL": "warning",
    }
    env.pop("EFFGATE_REDIS_URL", None)
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [effgate(), "serve", "--policy", str(policy)], env=env, stdout=log, stderr=log
    )
    origin = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, origin, tmp_path / "serve.log")
        yield proc, origin, policy
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_serve_reloads_on_sighup_and_exits_0_on_sigterm(
    served: tuple[subprocess.Popen[bytes], str, Path],
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
    tmp_path: Path,
) -> None:
    proc, origin, policy = served
    with httpx.Client(base_url=origin, timeout=20) as c:
        r = c.post("/v1/chat/completions", json=chat("what is two plus two?"))
        assert r.status_code == 200, r.text
        assert r.headers["x-effgate-route"] == "auto"
        assert r.headers["x-effgate-model"] in ("small", "big")
        # the demo route has a quality bar, so the shipped estimator scored the prompt
        assert math.isfinite(float(r.headers["x-effgate-difficulty"]))
        assert r.json()["model"] == r.headers["x-effgate-model"]
        served_id = r.headers["x-effgate-request-id"]

        data = yaml.safe_load(policy.read_text())
        data["routes"].append({"name": "fast", "candidates": ["small"]})
        policy.write_text(yaml.safe_dump(data, sort_keys=False))
        sha = hashlib.sha256(policy.read_bytes()).hexdigest()
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: c.get("/readyz").json()["policy_sha256"] == sha, 10, "reload")
        assert "fast" in [m["id"] for m in c.get("/v1/models").json()["data"]]
        fast = c.post("/v1/chat/completions", json=chat(model="fast"))
        assert fast.status_code == 200 and fast.headers["x-effgate-model"] == "small"

    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=30)
    assert time.monotonic() - t0 < 15
    records = (tmp_path / "records" / "records.jsonl").read_bytes().splitlines()
    ids = [orjson.loads(line)["id"] for line in records]
    assert served_id in ids and len(ids) == 2, "records are flushed on shutdown"
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log, log
    assert rc == 0


def test_serve_with_an_invalid_policy_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nmodels: []\nroutes: []\ndefault_route: auto\n")
    env = {**os.environ, "EFFGATE_RECORDS_DIR": str(tmp_path / "records")}
    argv = [effgate(), "serve", "--policy", str(bad), "--host", "127.0.0.1"]
    argv += ["--port", str(free_port())]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.startswith("effgate serve: ") and "bad.yaml" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr


def test_demo_serves_the_readme_request_from_any_directory(tmp_path: Path) -> None:
    """The README's first command: ``effgate demo`` (fakes on 9001 and 9002, as its policy
    says), then an OpenAI-style request, from a directory that is not the checkout."""
    for taken in (9001, 9002):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", taken)) != 0, f"port {taken} is busy: demo needs it"
    port = free_port()
    log = (tmp_path / "demo.log").open("wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EFFGATE_")}
    proc = subprocess.Popen(
        [effgate(), "demo", "--port", str(port)], cwd=tmp_path, env=env, stdout=log, stderr=log
    )
    origin = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, origin, tmp_path / "demo.log")
        r = httpx.post(
            origin + "/v1/chat/completions",
            json={"model": "auto", "messages": [{"role": "user", "content": "Summarise: hi"}]},
            timeout=20,
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-effgate-model"] in ("small", "big")
        assert r.json()["choices"][0]["message"]["content"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
    assert (tmp_path / "records" / "records.jsonl").exists(), "the demo writes ./records"


def test_serve_freezes_the_start_up_heap_and_widens_the_young_generation() -> None:
    """In a process of its own: the collector settings are global."""
    code = (
        "import gc, sys\n"
        "from gateway.cli.serve import GC_THRESHOLDS, tune_gc\n"
        "before = gc.get_freeze_count()\n"
        "tune_gc()\n"
        "assert gc.get_threshold() == GC_THRESHOLDS, gc.get_threshold()\n"
        "assert gc.get_freeze_count() > before + 1000, gc.get_freeze_count()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
