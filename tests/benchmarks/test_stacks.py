"""Attributing py-spy's collapsed stacks to the request's stages."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.stacks import main, read, stage_of, summarise

ROOT = "main (gateway/cli/serve.py:55);Runner.run (asyncio/runners.py:118)"
ASGI = "RequestResponseCycle.run_asgi (uvicorn/protocols/http/httptools_impl.py:422)"
MW = "GatewayApp._http (gateway/edge.py:69)"
ROUTER = "serve (gateway/lifecycle.py:90)"
HANDLER = "chat (gateway/pipeline.py:54)"
ROUTE_INPUT = "route_input (gateway/pipeline.py:110)"
ESTIMATOR = "Estimator.difficulty (router_models/estimator.py:131)"
HTTPX = (
    "HttpxUpstream.complete (gateway/upstreams/httpx_client.py:80);"
    "AsyncClient.send (httpx/_client.py:1)"
)
LINES = [
    f"{ROOT};{ASGI};{MW};{ROUTER};{HANDLER};{ROUTE_INPUT};{ESTIMATOR};dot (numpy:1) 30",
    f"{ROOT};{ASGI};{MW};{ROUTER};{HANDLER};{ROUTE_INPUT} 10",
    f"{ROOT};{ASGI};{MW};{ROUTER};{HANDLER};forward (gateway/forward.py:1);{HTTPX} 50",
    f"{ROOT};{ASGI};{MW};{ROUTER} 5",
    f"{ROOT};{ASGI};{MW} 5",
    "Thread._bootstrap (threading.py:1002);Queue.get (queue.py:171);"
    "Condition.wait (threading.py:327) 40",
    "not a sample line",
]


def test_innermost_handler_stage_wins() -> None:
    samples = read(LINES)
    assert len(samples) == 6
    stages = [stage_of(frames) for frames, _ in samples]
    assert stages[:5] == [
        "estimator: difficulty()",
        "route_input (rest)",
        "upstream call: httpx + httpcore",
        "lifecycle (rest): serve, respond",
        "effgate edge: dispatch, headers",
    ]
    assert stage_of(["Runner.run (asyncio/runners.py:118)"]) == "event loop, asyncio, other"


def test_summary_shares_leave_lock_waits_out() -> None:
    text = summarise(read(LINES), top=3)
    assert "100 busy samples (40 more in lock waits left out)" in text
    assert "| upstream call: httpx + httpcore | 50.0% |" in text
    assert "| estimator: difficulty() | 30.0% |" in text
    assert "| `main (gateway/cli/serve.py:55)` | 100.0% |" in text


def test_main_reads_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "stacks.txt"
    path.write_text("\n".join(LINES) + "\n")
    assert main([str(path), "--top", "2"]) == 0
    assert "| stage | share |" in capsys.readouterr().out
    assert main([]) == 2
