"""The fake OpenAI upstream, driven over loopback with httpx, raw sockets and the openai SDK."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import openai
import orjson
import pytest

from fake_upstream import FakeConfig, FakeUpstream
from tests.fake_upstream.conftest import (
    chat,
    sse_events,
    wait_until,
)
from tests.fakes.servers import FakeUpstreamHandle, serve_fake_upstream

# -- faults --------------------------------------------------------------------------------


def test_status_faults_in_order_with_retry_after(
    fake: FakeUpstreamHandle, http: httpx.Client
) -> None:
    fake.set_faults(
        {"kind": "status", "status": 503, "count": 2},
        {"kind": "status", "status": 429, "retry_after": 7},
        {"kind": "status", "status": 429},
    )
    statuses = [http.post("/chat/completions", json=chat()) for _ in range(5)]
    assert [r.status_code for r in statuses] == [503, 503, 429, 429, 200]
    assert statuses[0].json()["error"]["type"] == "server_error"
    assert "retry-after" not in statuses[0].headers
    assert statuses[2].headers["retry-after"] == "7"
    assert statuses[3].headers["retry-after"] == "1"
    assert statuses[2].json()["error"]["code"] == "rate_limit_exceeded"
    assert fake.stats["faults_injected"] == {"status": 4}


def test_admin_fault_api(fake: FakeUpstreamHandle, http: httpx.Client) -> None:
    admin = str(fake.base_url).removesuffix("/v1")
    faults = {"faults": [{"kind": "status", "status": 500, "count": 3}, {"kind": "hang"}]}
    r = httpx.post(f"{admin}/_fake/faults", json=faults)
    assert r.status_code == 200 and r.json()["faults"][0]["count"] == 3
    assert http.get("/models").status_code == 200  # admin faults hit only model requests
    assert http.post("/chat/completions", json=chat()).status_code == 500
    assert httpx.get(f"{admin}/_fake/faults").json()["faults"][0]["count"] == 2
    assert httpx.delete(f"{admin}/_fake/faults").json() == {"faults": []}
    assert http.post("/chat/completions", json=chat()).status_code == 200
    for bad in ({"faults": [{"kind": "explode"}]}, {"faults": [{"kind": "cut", "ms": "x"}]}, {}):
        r = httpx.post(f"{admin}/_fake/faults", json=bad)
        assert r.status_code == 400 and r.json()["error"]["param"] == "faults"
    fake.set_faults({"kind": "status"})
    assert httpx.post(f"{admin}/_fake/reset").status_code == 200
    assert fake.stats["requests"] == {} and fake.stats["faults_pending"] == []


def test_hang_until_client_gives_up(fake: FakeUpstreamHandle, http: httpx.Client) -> None:
    fake.set_faults({"kind": "hang"})
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        http.post("/chat/completions", json=chat(), timeout=0.3)
    assert time.monotonic() - started >= 0.29
    wait_until(lambda: fake.stats["disconnects"] == 1)


def test_reset_is_a_tcp_reset(fake: FakeUpstreamHandle, sdk: openai.OpenAI) -> None:
    fake.set_faults({"kind": "reset"})
    with socket.create_connection(("127.0.0.1", fake.port)) as sock:
        payload = orjson.dumps(chat())
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s"
            % (len(payload), payload)
        )
        with pytest.raises(ConnectionResetError):
            sock.recv(1024)
    with pytest.raises(openai.APIConnectionError):
        sdk.chat.completions.create(
            model="m-small", messages=[{"role": "user", "content": "x [[fault:reset]]"}]
        )


def test_cut_stream_is_incomplete(fake: FakeUpstreamHandle, http: httpx.Client) -> None:
    fake.set_faults({"kind": "cut", "after_chunks": 3})
    received: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        http.stream("POST", "/chat/completions", json=chat(stream=True)) as r,
    ):
        for line in r.iter_lines():
            if line:
                received.append(line)
    assert len(received) == 3 and "[DONE]" not in "".join(received)
    fake.set_faults({"kind": "cut"})
    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/chat/completions", json=chat())
    assert fake.stats["disconnects"] == 0


def test_markers_through_the_sdk(fake: FakeUpstreamHandle, sdk: openai.OpenAI) -> None:
    def ask(marker: str, **extra: Any) -> Any:
        messages: Any = [
            {"role": "user", "content": "an earlier turn [[fault:reset]]"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": f"please {marker}"},
        ]
        return sdk.chat.completions.create(model="m-small", messages=messages, **extra)

    with pytest.raises(openai.InternalServerError) as info:
        ask("[[fault:status=503]]")
    assert info.value.status_code == 503
    with pytest.raises(openai.RateLimitError) as rate:
        ask("[[fault:status=429,retry_after=3]]")
    assert rate.value.response.headers["retry-after"] == "3"
    stream = ask("[[fault:cut=3]]", stream=True)
    got = []
    with pytest.raises(openai.APIError):
        got.extend(stream)
    assert len(got) == 3
    with pytest.raises(openai.APITimeoutError):
        ask("[[fault:hang]]", timeout=0.2)
    with pytest.raises(openai.BadRequestError):
        ask("[[fault:explode]]")
    with pytest.raises(openai.InternalServerError):
        ask("[[fault:status]]")  # status defaults to 503
    assert ask("no marker in the last user message").choices[0].finish_reason == "stop"
    assert fake.stats["faults_injected"] == {"status": 3, "cut": 1, "hang": 1}


def test_marker_wins_over_queue(fake: FakeUpstreamHandle, http: httpx.Client) -> None:
    fake.set_faults({"kind": "status", "status": 502})
    assert http.post("/chat/completions", json=chat("[[fault:status=504]]")).status_code == 504
    assert http.post("/chat/completions", json=chat()).status_code == 502
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        http.post("/completions", json={"model": "m-small", "prompt": "[[fault:reset]]"})
    assert http.post("/completions", json={"model": "m-small", "prompt": "x"}).status_code == 200


def test_stall_and_slow_first_byte(fake: FakeUpstreamHandle, http: httpx.Client) -> None:
    fake.set_faults({"kind": "stall", "after_chunks": 2, "ms": 600})
    stamps: list[float] = []
    lines: list[str] = []
    started = time.monotonic()
    with http.stream("POST", "/chat/completions", json=chat(stream=True)) as r:
        for line in r.iter_lines():
            if line:
                stamps.append(time.monotonic() - started)
                lines.append(line)
    # two chunks, then the stall (bounds from the request start survive a busy machine)
    assert stamps[1] < 0.4 and stamps[2] >= 0.6
    assert lines[-1] == "data: [DONE]" and len(lines) == 16 + 3
    fake.set_faults({"kind": "stall", "after_chunks": 1, "ms": 2000})
    with (
        pytest.raises(httpx.ReadTimeout),
        http.stream("POST", "/chat/completions", json=chat(stream=True), timeout=0.3) as r,
    ):
        r.read()
    wait_until(lambda: fake.stats["disconnects"] == 1)
    fake.set_faults({"kind": "slow_first_byte", "ms": 250}, {"kind": "stall", "ms": 250})
    for _ in range(2):
        started = time.monotonic()
        assert http.post("/chat/completions", json=chat()).status_code == 200
        assert time.monotonic() - started >= 0.24


def test_stats_record_requests(fake: FakeUpstreamHandle, http: httpx.Client) -> None:
    body = chat(stream=True, stream_options={"include_usage": True}, vendor_field={"a": [1]})
    http.post("/chat/completions", json=body, headers={"authorization": "Bearer sk-up"})
    http.post("/chat/completions", content=b"{oops")
    http.get("/models")
    http.get("/../healthz")
    stats = fake.stats
    assert stats["requests"] == {"/v1/chat/completions": 2, "/v1/models": 1, "/healthz": 1}
    assert stats["requests_total"] == 4 and stats["disconnects"] == 0
    first, second, third = stats["recent"]
    assert first["body"] == body and first["headers"]["authorization"] == "Bearer sk-up"
    assert second["body"] is None and third["path"] == "/v1/models"
    admin = str(fake.base_url).removesuffix("/v1")
    assert httpx.get(f"{admin}/_fake/stats").json()["requests"] == stats["requests"]
    for i in range(60):
        http.post("/chat/completions", json=chat(str(i)))
    recent = fake.stats["recent"]
    assert len(recent) == 50 and recent[-1]["body"]["messages"][0]["content"] == "59"
    assert "authorization" not in recent[-1]["headers"]


def test_keep_alive_and_pipelining(fake: FakeUpstreamHandle) -> None:
    slow = orjson.dumps(chat("[[fault:slow_first_byte=100]]", stream=True))
    fast = orjson.dumps(chat("fast"))

    def post(payload: bytes, extra: bytes = b"") -> bytes:
        return (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n%scontent-length: %d\r\n\r\n%s"
            % (extra, len(payload), payload)
        )

    with socket.create_connection(("127.0.0.1", fake.port)) as sock:
        sock.sendall(post(slow) + post(fast) + post(fast, b"connection: close\r\n"))
        sock.settimeout(5)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 3
    stream_end = data.index(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    assert data.index(b"HTTP/1.1 200 OK", 1) > stream_end
    assert data.rstrip().endswith(b"}") and b"connection: close" in data
    with httpx.Client(base_url=fake.base_url, limits=httpx.Limits(max_connections=1)) as client:
        peers = set()
        for _ in range(5):
            r = client.post("/chat/completions", json=chat())
            peers.add(r.extensions["network_stream"].get_extra_info("client_addr"))
        assert len(peers) == 1
    with socket.create_connection(("127.0.0.1", fake.port)) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 400")


def test_concurrent_clients(fake: FakeUpstreamHandle) -> None:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=fake.base_url) as client:
            jobs = [client.post("/chat/completions", json=chat(f"q{i}")) for i in range(64)]
            return await asyncio.gather(*jobs)

    responses = asyncio.run(run())
    assert all(r.status_code == 200 for r in responses)
    assert len({r.json()["id"] for r in responses}) == 64
    assert all(
        r.json()["choices"][0]["message"]["content"].count(f"q{i}") for i, r in enumerate(responses)
    )


def test_latency_and_pacing() -> None:
    with serve_fake_upstream(latency_ms=80, tokens_per_s=50, reply_words=6) as fake:
        stamps: list[float] = []
        started = time.monotonic()
        with (
            httpx.Client(base_url=fake.base_url) as client,
            client.stream("POST", "/chat/completions", json=chat(stream=True)) as r,
        ):
            for line in r.iter_lines():
                if line:
                    stamps.append(time.monotonic() - started)
        assert stamps[0] >= 0.08
        assert stamps[-1] >= 0.08 + 6 / 50 - 0.005  # server-paced: 6 tokens at 50/s
        started = time.monotonic()
        out = httpx.post(f"{fake.base_url}/chat/completions", json=chat()).json()
        assert time.monotonic() - started >= 0.08 + 6 / 50 - 0.005
        assert out["usage"]["completion_tokens"] == 6


def test_disconnect_mid_stream_is_counted() -> None:
    with serve_fake_upstream(tokens_per_s=20) as fake:
        with (
            httpx.Client(base_url=fake.base_url) as client,
            client.stream("POST", "/chat/completions", json=chat(stream=True)) as r,
        ):
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
        wait_until(lambda: fake.stats["disconnects"] == 1)


def test_cli_subprocess() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "fake_upstream", "--port", str(port), "--models", "a,b"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        assert httpx.post(f"{base}/v1/chat/completions", json={**chat(), "model": "b"}).is_success
        assert (
            httpx.post(f"{base}/v1/chat/completions", json={**chat(), "model": "c"}).status_code
            == 404
        )
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert f"listening on http://127.0.0.1:{port}/v1" in out


def test_serve_on_a_running_loop() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def run() -> dict[str, Any]:
        task = asyncio.create_task(FakeUpstream(FakeConfig(reply_words=3)).serve(port=port))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1") as client:
            for _ in range(200):
                try:
                    reply = await client.post("/chat/completions", json=chat())
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return dict(reply.json())

    assert asyncio.run(run())["choices"][0]["message"]["content"] == "m-small says: hello"


def test_slow_reader_gets_everything() -> None:
    with serve_fake_upstream(reply_words=20000) as fake:
        body = chat(stream=True, stream_options={"include_usage": True})
        with (
            httpx.Client(base_url=fake.base_url) as client,
            client.stream("POST", "/chat/completions", json=body) as r,
        ):
            time.sleep(0.3)  # the server's write buffer fills and it must wait (pause_writing)
            events = sse_events(r.read().decode())
        usage = json.loads(events[-2])["usage"]
        assert usage["completion_tokens"] == 20000 == len(events) - 4
        assert fake.stats["disconnects"] == 0


def test_client_leaving_during_latency_or_json_stall() -> None:
    with serve_fake_upstream(latency_ms=2000) as fake, httpx.Client(timeout=0.1) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post(f"{fake.base_url}/chat/completions", json=chat())
        with pytest.raises(httpx.ReadTimeout):
            client.post(f"{fake.base_url}/chat/completions", json=chat(stream=True))
        with pytest.raises(httpx.ReadTimeout):
            client.post(f"{fake.base_url}/chat/completions", json=chat("[[fault:status=500]]"))
        wait_until(lambda: fake.stats["disconnects"] == 3)
    with serve_fake_upstream() as fake, httpx.Client(timeout=0.1) as client:
        fake.set_faults({"kind": "stall", "ms": 2000})
        with pytest.raises(httpx.ReadTimeout):
            client.post(f"{fake.base_url}/chat/completions", json=chat())
        wait_until(lambda: fake.stats["disconnects"] == 1)


def test_expect_continue(fake: FakeUpstreamHandle) -> None:
    payload = orjson.dumps(chat())
    with socket.create_connection(("127.0.0.1", fake.port)) as sock:
        sock.settimeout(5)
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(payload)
        )
        assert sock.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(payload)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK")


def test_completions_and_embeddings_validation(http: httpx.Client) -> None:
    ids = http.post("/completions", json={"model": "m-small", "prompt": [[5, 6], [7]], "n": 2})
    assert ids.json()["usage"]["prompt_tokens"] == 3 and len(ids.json()["choices"]) == 4
    bad_bodies: list[tuple[str, dict[str, Any], str]] = [
        ("/completions", {"prompt": [{"x": 1}]}, "prompt"),
        ("/completions", {"prompt": "[[fault:nope]]"}, "prompt"),
        ("/embeddings", {"input": "x", "dimensions": 0}, "dimensions"),
        ("/embeddings", {"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ("/embeddings", {"input": []}, "input"),
    ]
    for path, extra, param in bad_bodies:
        r = http.post(path, json={"model": "m-small", **extra})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, extra


def test_port_in_use_is_reported(fake: FakeUpstreamHandle) -> None:
    with pytest.raises(OSError):
        serve_fake_upstream(port=fake.port)
