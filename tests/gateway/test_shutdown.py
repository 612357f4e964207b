"""SIGTERM to a real ``effgate serve`` with a stream and a JSON request in flight.

Within ``EFFGATE_SHUTDOWN_TIMEOUT_S`` both finish in full, the listening socket is closed at
once (new connections are refused), the records of both are flushed and the process exits 0.
Past the deadline both are cut: the JSON request answers 503 ``server_shutting_down``, the
stream ends with one error event saying the same, both are recorded as ``unavailable``, and
the process still exits 0. The fake upstream holds each request open with a fault marker.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.fakes.servers import FakeUpstreamHandle
from tests.gateway.conftest import chat, sse_data, wait_until
from tests.gateway.serving import ServeProcess, serve_process


class InFlight:
    """One stream and one JSON request, each in its own thread, held open by the fake."""

    def __init__(self, gw: ServeProcess, hold_ms: int) -> None:
        self.gw = gw
        self.stream_body = b""
        self.stream_first = threading.Event()
        self.stream_id = ""
        self.json: httpx.Response | None = None
        self.errors: list[BaseException] = []
        # the stream stalls after its second chunk, the JSON answer before its first byte
        stream_req = chat(f"stream please [[fault:stall=2,ms={hold_ms}]]", stream=True)
        json_req = chat(f"json please [[fault:slow_first_byte={hold_ms}]]")
        self.threads = [
            threading.Thread(target=self._guard, args=(self._stream, stream_req), daemon=True),
            threading.Thread(target=self._guard, args=(self._json, json_req), daemon=True),
        ]
        for t in self.threads:
            t.start()

    def _guard(self, fn: Any, body: dict[str, Any]) -> None:
        try:
            fn(body)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def _stream(self, body: dict[str, Any]) -> None:
        with (
            httpx.Client(timeout=60) as c,
            c.stream("POST", self.gw.origin + "/v1/chat/completions", json=body) as r,
        ):
            assert r.status_code == 200
            self.stream_id = r.headers["x-effgate-request-id"]
            for chunk in r.iter_raw():
                self.stream_body += chunk
                self.stream_first.set()

    def _json(self, body: dict[str, Any]) -> None:
        self.json = httpx.post(self.gw.origin + "/v1/chat/completions", json=body, timeout=60)

    def join(self) -> None:
        for t in self.threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in self.threads)
        assert not self.errors, self.errors


def _start_in_flight(gw: ServeProcess, small: FakeUpstreamHandle, hold_ms: int) -> InFlight:
    flight = InFlight(gw, hold_ms)
    assert flight.stream_first.wait(20), "the stream did not start"
    wait_until(
        lambda: small.stats["requests"].get("/v1/chat/completions", 0) == 2,
        10,
        "both requests at the upstream",
    )
    return flight


def _refused(port: int) -> bool:
    """New requests are no longer served: the connection is refused, or (a connection the
    kernel accepted into the backlog as the listener closed) dropped without a response or
    reset."""
    try:
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
        return True
    return False


def test_sigterm_lets_a_stream_and_a_json_request_finish_then_exits_0(
    tmp_path: Path, small: FakeUpstreamHandle, big: FakeUpstreamHandle
) -> None:
    with serve_process(tmp_path, small, big, EFFGATE_SHUTDOWN_TIMEOUT_S="20") as gw:
        flight = _start_in_flight(gw, small, hold_ms=2000)
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: _refused(gw.port), 3, "new connections refused")
        refused_after = time.monotonic() - t0
        assert gw.proc.poll() is None, "exited with requests in flight"
        flight.join()
        rc = gw.proc.wait(timeout=30)
        took = time.monotonic() - t0
        print(f"\nrefused new connections after {refused_after:.2f} s; exited after {took:.2f} s")

        # both finished in full
        assert flight.json is not None and flight.json.status_code == 200, flight.json
        assert flight.json.json()["choices"][0]["message"]["content"]
        events = sse_data(flight.stream_body)
        assert events[-1] == b"[DONE]"
        assert not any(e.startswith(b'{"error"') for e in events)
        # flushed before exit: one record each, both ok
        records = {r["id"]: r for r in gw.records()}
        assert len(records) == 2
        assert records[flight.stream_id]["outcome"] == "ok"
        assert records[flight.json.headers["x-effgate-request-id"]]["outcome"] == "ok"
        assert rc == 0
        assert took < 15, "waited for the whole shutdown deadline instead of the requests"
        log = gw.log_text()
        assert "Traceback" not in log, log


def test_past_the_shutdown_deadline_in_flight_work_is_cut_and_recorded(
    tmp_path: Path, small: FakeUpstreamHandle, big: FakeUpstreamHandle
) -> None:
    deadline_s = 1.0
    with serve_process(
        tmp_path, small, big, EFFGATE_SHUTDOWN_TIMEOUT_S=str(deadline_s), EFFGATE_LOG_LEVEL="info"
    ) as gw:
        flight = _start_in_flight(gw, small, hold_ms=30_000)
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        flight.join()
        rc = gw.proc.wait(timeout=30)
        took = time.monotonic() - t0
        print(f"\ncut at the {deadline_s:g} s deadline; exited after {took:.2f} s")
        assert deadline_s <= took < deadline_s + 8

        assert flight.json is not None and flight.json.status_code == 503
        assert flight.json.json()["error"]["code"] == "server_shutting_down"
        events = sse_data(flight.stream_body)
        assert b"[DONE]" not in events
        last = orjson.loads(events[-1])["error"]
        assert last["code"] == "server_shutting_down" and last["type"] == "server_error"
        records = {r["id"]: r for r in gw.records()}
        assert len(records) == 2
        for rid in (flight.stream_id, flight.json.headers["x-effgate-request-id"]):
            assert records[rid]["outcome"] == "unavailable", records[rid]
            assert "shut down" in records[rid]["error"]
        assert records[flight.stream_id]["status"] == 200  # the stream had started
        assert records[flight.json.headers["x-effgate-request-id"]]["status"] == 503
        assert rc == 0
        log = gw.log_text()
        assert "timeout graceful shutdown exceeded" in log
        assert "Traceback" not in log, log


def _readyz(gw: ServeProcess) -> tuple[int, str]:
    r = httpx.get(gw.origin + "/readyz", timeout=2)
    return r.status_code, r.json()["status"]


def test_a_shutdown_delay_keeps_serving_while_readyz_says_draining(
    tmp_path: Path, small: FakeUpstreamHandle, big: FakeUpstreamHandle
) -> None:
    delay_s = 4.0
    with serve_process(
        tmp_path, small, big, EFFGATE_SHUTDOWN_DELAY_S=str(delay_s), EFFGATE_LOG_LEVEL="info"
    ) as gw:
        assert _readyz(gw) == (200, "ready")
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: _readyz(gw) == (503, "draining"), 1.5, "/readyz says draining")
        # still serving, on new connections too, while a load balancer takes it out
        served = httpx.post(gw.origin + "/v1/chat/completions", json=chat("still here"), timeout=5)
        assert time.monotonic() - t0 < delay_s, "the check ran after the delay"
        assert served.status_code == 200, served.text
        assert httpx.get(gw.origin + "/healthz", timeout=2).status_code == 200
        rc = gw.proc.wait(timeout=30)
        took = time.monotonic() - t0
        print(f"\ndrained for {delay_s:g} s; exited after {took:.2f} s")
        assert rc == 0 and delay_s <= took < delay_s + 8
        assert [r["id"] for r in gw.records()] == [served.headers["x-effgate-request-id"]]
        log = gw.log_text()
        assert "SIGTERM: draining for 4 s" in log and "Traceback" not in log, log


def test_a_second_sigterm_ends_the_shutdown_delay(
    tmp_path: Path, small: FakeUpstreamHandle, big: FakeUpstreamHandle
) -> None:
    with serve_process(tmp_path, small, big, EFFGATE_SHUTDOWN_DELAY_S="60") as gw:
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: _readyz(gw) == (503, "draining"), 1.5, "/readyz says draining")
        gw.proc.send_signal(signal.SIGTERM)
        rc = gw.proc.wait(timeout=30)
        assert rc == 0 and time.monotonic() - t0 < 10, "waited out the 60 s delay"
