"""Request records: the JSONL format of docs/contracts.md, rotation, and no silent drops."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from prometheus_client import CollectorRegistry

from gateway.metrics import Metrics
from gateway.records import JSONLFile, RecordLog
from router_models.signature import Signature
from tests.fakes.servers import FakeUpstreamHandle
from tests.gateway.conftest import GatewayFactory, PolicyFactory, chat

REQUEST_KEYS = {
    "type", "id", "endpoint", "time", "tenant", "route", "model", "upstream_model", "provider",
    "stream", "task", "status", "outcome", "error", "decision", "attempts", "fallback_from",
    "tokens", "cost_usd", "baseline_cost_usd", "reference_model", "latency_ms", "ttft_ms",
    "upstream_ms",
}  # fmt: skip
DECISION_KEYS = {"reason", "difficulty", "p", "quality_bar", "rule", "fallbacks", "candidates"}
CANDIDATE_KEYS = {"model", "p", "p_prior", "expected_cost_usd", "eligible", "reason"}
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(ln) for ln in path.read_bytes().splitlines()]


# -- JSONLFile -------------------------------------------------------------------------------


def test_rotation_keeps_the_newest_backups(tmp_path: Path) -> None:
    f = JSONLFile(tmp_path, max_bytes=100, backups=2)
    for i in range(10):
        f.write(orjson.dumps({"n": i, "pad": "x" * 20}) + b"\n")
    f.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["records.jsonl", "records.jsonl.1", "records.jsonl.2"]
    newest_first = [
        [r["n"] for r in lines(tmp_path / name)]
        for name in ("records.jsonl", "records.jsonl.1", "records.jsonl.2")
    ]
    # 37 bytes a line: a file rotates at its third line; lines 0-2 aged out
    assert newest_first == [[9], [6, 7, 8], [3, 4, 5]]


def test_rotation_without_backups_starts_afresh(tmp_path: Path) -> None:
    f = JSONLFile(tmp_path, max_bytes=10, backups=0)
    f.write(b'{"a": 1234567}\n')
    f.write(b'{"b": 1}\n')
    f.close()
    assert [p.name for p in tmp_path.iterdir()] == ["records.jsonl"]
    assert lines(tmp_path / "records.jsonl") == [{"b": 1}]


def test_appends_to_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "records.jsonl").write_bytes(b'{"old": true}\n')
    f = JSONLFile(tmp_path, max_bytes=10_000, backups=1)
    f.write(b'{"new": true}\n')
    f.close()
    assert lines(tmp_path / "records.jsonl") == [{"old": True}, {"new": True}]


# -- RecordLog -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_full_buffer_drops_and_counts(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    log = RecordLog(
        file=JSONLFile(tmp_path, max_bytes=1 << 20, backups=1),
        buffer=3,
        on_drop=lambda sink: metrics.records_dropped.labels(sink).inc(),
    )
    for i in range(5):  # the writer is not running yet: the queue fills up
        log.emit({"n": i})
    assert log.dropped == 2
    assert registry.get_sample_value("effgate_records_dropped_total", {"sink": "buffer"}) == 2
    log.start()
    await log.aclose()
    assert lines(tmp_path / "records.jsonl") == [{"n": 0}, {"n": 1}, {"n": 2}]


@pytest.mark.anyio
async def test_aclose_writes_everything_queued(tmp_path: Path) -> None:
    log = RecordLog(file=JSONLFile(tmp_path, max_bytes=1 << 20, backups=1), buffer=10_000)
    log.start()
    for i in range(2000):
        log.emit({"n": i})
    await log.aclose()
    assert [r["n"] for r in lines(tmp_path / "records.jsonl")] == list(range(2000))
    assert log.dropped == 0


@pytest.mark.anyio
async def test_a_failing_disk_is_counted_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "records.jsonl").symlink_to("/dev/full")  # every write: ENOSPC
    drops: list[str] = []
    log = RecordLog(
        file=JSONLFile(tmp_path, max_bytes=1 << 20, backups=1), buffer=100, on_drop=drops.append
    )
    log.start()
    log.emit({"n": 1})
    await until(lambda: drops == ["file"])
    log.emit({"n": 2})
    log.emit({"n": 3})
    await until(lambda: len(drops) == 3)
    assert log.dropped == 3
    assert set(drops) == {"file"}
    await log.aclose()


@pytest.mark.anyio
async def test_closing_a_failing_file_does_not_raise(tmp_path: Path) -> None:
    (tmp_path / "records.jsonl").symlink_to("/dev/full")
    drops: list[str] = []
    log = RecordLog(
        file=JSONLFile(tmp_path, max_bytes=1 << 20, backups=1), buffer=100, on_drop=drops.append
    )
    log.start()
    log.emit({"n": 1})
    await until(lambda: drops == ["file"])
    await log.aclose()


async def until(check: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not check():  # noqa: ASYNC110 (polls a plain list, not an event)
            await anyio.sleep(0.01)


# -- through the gateway ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode,explicit,routed",
    [("routed", False, True), ("all", True, True), ("off", False, False),
     (True, True, True), (False, False, False), ("false", False, False)],
)  # fmt: skip
def test_which_records_carry_a_signature(
    make_gateway: GatewayFactory,
    small: FakeUpstreamHandle,
    big: FakeUpstreamHandle,
    mode: object,
    explicit: bool,
    routed: bool,
) -> None:
    # "routed" (the default): the requests a learned router scores; an explicit model is not
    # routed and its record skips the signature's CPU; true / false: the setting's first form
    gw = make_gateway(records_signatures=mode)
    with gw.http() as c:
        for model, rid in (("small", "explicit"), ("routed", "routed"), ("auto", "no-bar")):
            reply = c.post(
                "/v1/chat/completions", json=chat(model=model), headers={"x-request-id": rid}
            )
            assert reply.status_code == 200
    recs = {r["id"]: r for r in gw.records(at_least=3)}
    assert ("signature" in recs["explicit"]) is explicit
    assert ("signature" in recs["routed"]) is routed
    assert ("signature" in recs["no-bar"]) is explicit  # a route without a bar scores nothing
    for r in recs.values():
        if "signature" in r:
            assert Signature.from_json(r["signature"]).digest


def test_request_record_matches_the_contract(
    make_gateway: GatewayFactory, small: FakeUpstreamHandle
) -> None:
    gw = make_gateway()
    with gw.http() as c:
        c.post(
            "/v1/chat/completions",
            json=chat(model="routed", metadata={"task": "summarize"}),
            headers={"x-request-id": "rec-1"},
        )
    (rec,) = gw.records(at_least=1)
    assert set(rec) == REQUEST_KEYS | {"signature"}, "no prompt unless the policy sets log_prompts"
    sig = Signature.from_json(rec["signature"])  # hashed features, never the text
    assert sig.digest and "summarize" not in orjson.dumps(rec["signature"]).decode()
    assert rec["type"] == "request" and rec["id"] == "rec-1" and rec["endpoint"] == "chat"
    assert TIME.match(rec["time"]), rec["time"]
    assert (rec["tenant"], rec["route"], rec["model"]) == ("default", "routed", "big")
    assert (rec["upstream_model"], rec["provider"]) == ("mock-big", "openai")
    assert (rec["stream"], rec["task"], rec["status"], rec["outcome"]) == (
        False, "summarize", 200, "ok",
    )  # fmt: skip
    assert rec["error"] is None and rec["attempts"] == 1 and rec["fallback_from"] == []
    assert rec["tokens"] == {
        "input": 3, "output": 16, "cached": 0, "reasoning": 0, "estimated": False,
    }  # fmt: skip
    assert rec["reference_model"] == "big"
    d = rec["decision"]
    assert set(d) == DECISION_KEYS
    assert (d["reason"], d["difficulty"], d["quality_bar"]) == ("cheapest_above_bar", 0.0, 0.8)
    assert d["p"] == pytest.approx(0.9677, abs=1e-4) and d["fallbacks"] == ["small"]
    assert [set(c) for c in d["candidates"]] == [CANDIDATE_KEYS] * 2
    assert rec["latency_ms"] >= rec["upstream_ms"] > 0 and rec["ttft_ms"] is None


def test_stream_record_has_ttft_and_prompt_when_logged(
    make_gateway: GatewayFactory, policy: PolicyFactory, small: FakeUpstreamHandle
) -> None:
    gw = make_gateway(policy(log_prompts=True))
    with gw.http() as c:
        c.post("/v1/chat/completions", json=chat("tell me a story", stream=True))
    (rec,) = gw.records(at_least=1)
    assert rec["prompt"] == "tell me a story"
    assert rec["stream"] is True and rec["outcome"] == "ok"
    assert 0 < rec["ttft_ms"] <= rec["latency_ms"]
    assert rec["tokens"]["output"] == 16 and rec["tokens"]["estimated"] is False


def test_failed_requests_leave_records_too(
    make_gateway: GatewayFactory, small: FakeUpstreamHandle
) -> None:
    gw = make_gateway(api_keys={"sk-a": "team-a"})
    auth = {"authorization": "Bearer sk-a"}
    with gw.http() as c:
        c.post("/v1/chat/completions", json=chat(), headers={"authorization": "Bearer bad"})
        c.post("/v1/chat/completions", json=chat(model="nope"), headers=auth)
        c.post("/v1/chat/completions", json=chat("[[fault:status=404]]"), headers=auth)
    recs = gw.records(at_least=3)
    got = [(r["tenant"], r["status"], r["outcome"], r["model"]) for r in recs]
    assert got == [
        ("default", 401, "client_error", None),
        ("team-a", 404, "client_error", None),
        ("team-a", 404, "client_error", "small"),
    ]
    assert recs[2]["error"] == "upstream small returned HTTP 404"


def test_gateway_rotates_and_loses_nothing(
    make_gateway: GatewayFactory, small: FakeUpstreamHandle
) -> None:
    gw = make_gateway(records_max_bytes=3000, records_backups=50)
    ids = []
    with gw.http() as c:
        for i in range(12):
            r = c.post("/v1/chat/completions", json=chat(f"request {i}"))
            ids.append(r.headers["x-effgate-request-id"])
    recs = gw.records(at_least=12)
    assert [r["id"] for r in recs] == ids
    assert len(list(gw.records_dir.glob("records.jsonl.*"))) >= 2  # rotated at least twice


def test_an_overflowing_buffer_counts_every_drop_and_logs_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    drops: list[str] = []
    log = RecordLog(file=None, buffer=1, on_drop=drops.append)
    with caplog.at_level("ERROR", logger="effgate.records"):
        for i in range(50):
            log.emit({"type": "request", "id": str(i)})
    assert log.dropped == 49 and drops == ["buffer"] * 49
    lines = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
