"""The load generator against a real fake upstream on loopback: counts, timing, errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import orjson
import pytest

from benchmarks.loadgen import Sample, build_request, first_success, main, run
from benchmarks.procs import free_port
from tests.fakes.servers import FakeUpstreamHandle, serve_fake_upstream

PATH = "/v1/chat/completions"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstreamHandle]:
    with serve_fake_upstream(models=("m",), tokens_per_s=2000.0, reply_words=4) as handle:
        yield handle


def _request(port: int, model: str = "m", stream: bool = False) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return build_request("127.0.0.1", port, PATH, orjson.dumps(body), "sk-test")


def _run(coro: object) -> Sample:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_request_count_is_exact_over_keep_alive_connections(fake: FakeUpstreamHandle) -> None:
    fake.reset()
    sample = _run(run("127.0.0.1", fake.port, _request(fake.port), concurrency=4, requests=37))
    assert sample.completed == 37
    assert sample.errors == 0
    assert all(0 < f <= lat for f, lat in zip(sample.firsts, sample.latencies, strict=True))
    assert sample.rps > 0
    assert fake.stats["requests"]["/v1/chat/completions"] == 37


def test_fewer_requests_than_connections(fake: FakeUpstreamHandle) -> None:
    sample = _run(run("127.0.0.1", fake.port, _request(fake.port), concurrency=8, requests=3))
    assert (sample.completed, sample.errors) == (3, 0)


def test_stream_first_event_arrives_before_the_end(fake: FakeUpstreamHandle) -> None:
    # 4 words paced at 2000 tokens/s: the stream lasts a few ms, its first event comes at once
    req = _request(fake.port, stream=True)
    sample = _run(run("127.0.0.1", fake.port, req, concurrency=2, requests=10))
    assert sample.completed == 10
    assert all(f < lat for f, lat in zip(sample.firsts, sample.latencies, strict=True))
    assert min(sample.latencies) >= 0.001


def test_non_200_answers_count_as_errors(fake: FakeUpstreamHandle) -> None:
    req = _request(fake.port, model="no-such-model")
    sample = _run(run("127.0.0.1", fake.port, req, concurrency=2, requests=6))
    assert (sample.completed, sample.errors) == (0, 6)


def test_duration_budget_stops_by_itself(fake: FakeUpstreamHandle) -> None:
    sample = _run(run("127.0.0.1", fake.port, _request(fake.port), concurrency=2, duration_s=0.2))
    assert sample.completed > 0
    assert 0.15 <= sample.elapsed_s < 2.0


def test_a_budget_is_required(fake: FakeUpstreamHandle) -> None:
    with pytest.raises(ValueError, match="requests, duration_s"):
        _run(run("127.0.0.1", fake.port, b"", concurrency=1))


def test_refused_connection_raises_and_first_success_times_out() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(OSError):
        _run(run("127.0.0.1", port, _request(port), concurrency=1, requests=1))
    with pytest.raises(TimeoutError, match="no successful answer"):
        asyncio.run(first_success("127.0.0.1", port, _request(port), timeout_s=0.1))


def test_first_success_returns_once_served(fake: FakeUpstreamHandle) -> None:
    t = asyncio.run(first_success("127.0.0.1", fake.port, _request(fake.port), timeout_s=5))
    assert t > 0


def test_command_line(fake: FakeUpstreamHandle, capsys: pytest.CaptureFixture[str]) -> None:
    port = str(fake.port)
    assert main(["--port", port, "--model", "m", "--requests", "5", "--concurrency", "2"]) == 0
    assert capsys.readouterr().out.startswith("n=5 errors=0 ")
    assert main(["--port", port, "--model", "m", "--stream", "--requests", "2"]) == 0
    assert main(["--port", port, "--model", "nope", "--requests", "2"]) == 1
    assert "n=0 errors=2" in capsys.readouterr().out
