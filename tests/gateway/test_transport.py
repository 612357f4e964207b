"""Slow clients against a real ``effgate serve``: the header and body deadlines and the
connection cap (gateway/transport.py).

The slowloris test opens 200 connections that trickle bytes (100 inside their headers, 100
inside their bodies), sends ordinary requests while they are all open, and checks that the
ordinary ones are not delayed and that every slow one is cut at its deadline: a 408 or a
close for the headers, a 408 ``request_timeout`` (and a record) for the bodies.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from tests.fakes.servers import FakeUpstreamHandle
from tests.gateway.conftest import chat, wait_until
from tests.gateway.serving import serve_process

DEADLINE_S = 5.0  # both deadlines: long enough that the ordinary requests finish well within
SLOW = 100  # of each kind


@dataclass
class Slow:
    sock: socket.socket
    kind: str  # "headers" or "body"
    opened: float
    closed_at: float | None = None
    received: bytearray = field(default_factory=bytearray)


def _open_slow(port: int, kind: str) -> Slow:
    sock = socket.create_connection(("127.0.0.1", port))
    if kind == "headers":
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
    else:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
        )
    return Slow(sock, kind, time.monotonic())


def _trickle(slow: list[Slow], stop: threading.Event) -> None:
    """A byte to every open slow connection every 0.25 s; note when the server answers."""
    sel = selectors.DefaultSelector()
    for s in slow:
        sel.register(s.sock, selectors.EVENT_READ, s)
    open_ = len(slow)
    while open_ and not stop.is_set():
        for key, _ in sel.select(timeout=0.25):
            s = key.data
            try:
                chunk = s.sock.recv(65536)
            except OSError:
                chunk = b""
            if chunk:
                s.received += chunk
                continue
            s.closed_at = time.monotonic()
            sel.unregister(s.sock)
            open_ -= 1
        for s in slow:
            if s.closed_at is None:
                with contextlib.suppress(OSError):  # closed: the select notes it
                    s.sock.send(b"a" if s.kind == "headers" else b" ")
    sel.close()


def test_slowloris_connections_do_not_delay_others_and_are_cut_at_the_deadlines(
    tmp_path: Path, small: FakeUpstreamHandle, big: FakeUpstreamHandle
) -> None:
    with serve_process(
        tmp_path,
        small,
        big,
        EFFGATE_HEADER_TIMEOUT_S=str(DEADLINE_S),
        EFFGATE_BODY_TIMEOUT_S=str(DEADLINE_S),
    ) as gw:
        slow = [_open_slow(gw.port, "headers") for _ in range(SLOW)]
        slow += [_open_slow(gw.port, "body") for _ in range(SLOW)]
        stop = threading.Event()
        trickler = threading.Thread(target=_trickle, args=(slow, stop), daemon=True)
        trickler.start()
        try:
            took: list[float] = []
            with httpx.Client(base_url=gw.origin, timeout=10) as kept:  # one kept-alive
                for i in range(20):
                    t0 = time.monotonic()
                    if i % 2:
                        r = kept.post("/v1/chat/completions", json=chat(f"question {i}"))
                    else:  # a fresh connection each time
                        r = httpx.post(
                            gw.origin + "/v1/chat/completions", json=chat(f"q {i}"), timeout=10
                        )
                    took.append(time.monotonic() - t0)
                    assert r.status_code == 200, r.text
            normal_done = time.monotonic()
            print(
                f"\n{2 * SLOW} slow connections open; 20 ordinary requests: "
                f"median {statistics.median(took) * 1000:.1f} ms, max {max(took) * 1000:.1f} ms"
            )
            assert max(took) < 2.0, took
            # every slow connection was still open while the ordinary requests ran
            assert all(s.closed_at is None for s in slow)
            assert normal_done < min(s.opened for s in slow) + DEADLINE_S

            trickler.join(timeout=DEADLINE_S + 15)
            still = [(s.kind, bytes(s.received[:80])) for s in slow if s.closed_at is None]
            assert not still, (
                f"{len(still)} slow connections still open past the deadline: {still[:3]}"
            )
        finally:
            stop.set()
            for s in slow:
                s.sock.close()

        for s in slow:
            assert s.closed_at is not None
            held = s.closed_at - s.opened
            # cut at the deadline: not before it, and not long after (a noisy machine)
            assert DEADLINE_S - 0.5 < held < DEADLINE_S + 5, (s.kind, held)
            if s.kind == "body":
                head, _, body = bytes(s.received).partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 408 "), head
                assert b"connection: close" in head.lower()
                err = orjson.loads(body)["error"]
                assert err["code"] == "request_timeout" and err["type"] == "invalid_request_error"
            else:  # a 408, unless the trickle's next byte met the closed socket first (a reset)
                assert s.received == b"" or s.received.startswith(b"HTTP/1.1 408 ")
        cut = [s.closed_at - s.opened for s in slow if s.closed_at is not None]
        answered = sum(s.received.startswith(b"HTTP/1.1 408 ") for s in slow)
        print(f"slow connections cut after {min(cut):.2f}..{max(cut):.2f} s, {answered} saw a 408")

        # the body timeouts are exchanges: answered and recorded like any request
        def timed_out() -> list[dict[str, object]]:
            return [r for r in gw.records() if r.get("status") == 408]

        wait_until(lambda: len(timed_out()) >= SLOW, 5, "the 408 records")
        assert len(timed_out()) == SLOW
        assert {r["outcome"] for r in timed_out()} == {"client_error"}
        assert httpx.get(gw.origin + "/healthz", timeout=5).status_code == 200


def test_the_header_deadline_covers_silent_and_kept_alive_connections(
    tmp_path: Path, small: FakeUpstreamHandle, big: FakeUpstreamHandle
) -> None:
    with serve_process(tmp_path, small, big, EFFGATE_HEADER_TIMEOUT_S="1") as gw:
        silent = socket.create_connection(("127.0.0.1", gw.port))
        kept = socket.create_connection(("127.0.0.1", gw.port))
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        first = b""
        while not first.endswith(b'{"status":"ok"}'):
            first += kept.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        t0 = time.monotonic()
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n")  # the second request stalls
        silent.settimeout(5)
        kept.settimeout(5)
        assert silent.recv(65536) == b""  # nothing sent: closed without an answer
        answer = kept.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b'"code":"request_timeout"' in answer
        assert 0.8 < time.monotonic() - t0 < 4
        silent.close()
        kept.close()


def test_past_the_connection_cap_requests_get_an_openai_shaped_503(
    tmp_path: Path, small: FakeUpstreamHandle, big: FakeUpstreamHandle
) -> None:
    with serve_process(tmp_path, small, big, EFFGATE_MAX_CONNECTIONS="4") as gw:
        idle = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(4)]
        time.sleep(0.2)
        try:
            r = httpx.post(gw.origin + "/v1/chat/completions", json=chat(), timeout=10)
            assert r.status_code == 503
            assert r.headers["retry-after"] == "1" and r.headers["connection"] == "close"
            assert r.json()["error"] == {
                "message": "The gateway is at its connection limit; retry shortly.",
                "type": "server_error",
                "param": None,
                "code": "server_overloaded",
            }
        finally:
            for s in idle:
                s.close()
        time.sleep(0.2)
        r = httpx.post(gw.origin + "/v1/chat/completions", json=chat(), timeout=10)
        assert r.status_code == 200, r.text
