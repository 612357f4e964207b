"""``effgate records export`` against a real ``redis-server``: a gateway's record stream
becomes the same records its file sink wrote, incrementally, through cut-off runs, garbage
entries, a trimmed stream and a Redis that is down (whose URL, a secret, is never printed).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

from gateway.cli import main as effgate
from gateway.records_export import Exported, export
from gateway.records_export import main as export_main
from gateway.redis_client import connect
from router_models.records import RecordStream, record_files
from tests.fakes.servers import FakeUpstreamHandle
from tests.gateway.conftest import GatewayFactory, chat, closed_port, wait_until
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis
STREAM = "effgate:records"


def _lines(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def _run(redis_server: RedisServer, out: Path, *extra: str) -> int:
    return export_main(
        ["--redis-url", redis_server.url, "--stream", STREAM, "--out", str(out), *extra]
    )


def test_the_stream_exports_what_the_file_sink_wrote_and_only_once(
    make_gateway: GatewayFactory,
    redis_server: RedisServer,
    small: FakeUpstreamHandle,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gw = make_gateway(redis_url=redis_server.url, records_redis_stream=STREAM)
    with gw.http() as c:
        rid = c.post("/v1/chat/completions", json=chat()).headers["x-effgate-request-id"]
        c.post("/v1/chat/completions", json=chat(model="small"))
        assert c.post("/v1/feedback", json={"request_id": rid, "score": 0.25}).status_code == 200
        wait_until(lambda: redis_server.client.xlen(STREAM) == 3, what="three stream entries")
        out = tmp_path / "exported" / "stream.jsonl"
        # through the effgate command, as an operator runs it
        assert effgate(["records", "export", "--redis-url", redis_server.url,
                        "--stream", STREAM, "--out", str(out)]) == 0  # fmt: skip
        assert "exported 3 records" in capsys.readouterr().out
        assert _lines(out) == gw.records(at_least=3)
        assert _run(redis_server, out) == 0  # nothing new: nothing appended
        assert "exported 0 records" in capsys.readouterr().out
        assert len(_lines(out)) == 3
        c.post("/v1/chat/completions", json=chat())
        wait_until(lambda: redis_server.client.xlen(STREAM) == 4, what="a fourth entry")
    assert _run(redis_server, out) == 0
    assert _lines(out) == gw.records(at_least=4)
    # the readers of `effgate train --records` and `effgate report` take the file as it is
    stream = RecordStream(record_files(out.parent))
    kinds = [kind for kind, _ in stream]
    assert kinds == ["request", "request", "feedback", "request"] and stream.malformed_lines == 0


def _add(redis_server: RedisServer, fields: dict[str, bytes], entry_id: str = "*") -> str:
    got = redis_server.client.xadd(STREAM, fields, id=entry_id)  # type: ignore[arg-type]
    return got.decode() if isinstance(got, bytes) else str(got)


def _request(rid: str) -> dict[str, bytes]:
    return {"record": orjson.dumps({"type": "request", "id": rid, "model": "small"})}


def test_garbage_is_skipped_and_a_cut_off_run_is_redone_exactly_once(
    redis_server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = [_add(redis_server, _request(f"req_{i}")) for i in range(5)]
    _add(redis_server, {"record": b"{not json"})
    _add(redis_server, {"record": b"[1, 2]"})
    _add(redis_server, {"other": b"{}"})
    last = _add(redis_server, {"record": b'{"a":\n1}'})  # a record is one line
    out = tmp_path / "stream.jsonl"
    assert _run(redis_server, out, "--batch", "2") == 0
    assert "exported 5 records" in capsys.readouterr().out
    assert [r["id"] for r in _lines(out)] == [f"req_{i}" for i in range(5)]
    cursor = tmp_path / "stream.jsonl.cursor"
    assert cursor.read_text() == f"{last} {out.stat().st_size}\n"  # past the garbage

    # a run killed after its last batch's lines (one cut in half) and before their cursor
    three = sum(len(line) for line in out.read_bytes().splitlines(keepends=True)[:3])
    cursor.write_text(f"{ids[2]} {three}\n")
    with out.open("ab") as fh:
        fh.write(b'{"type": "requ')
    _add(redis_server, _request("req_5"))
    assert _run(redis_server, out) == 0
    assert "exported 3 records" in capsys.readouterr().out
    got = [r["id"] for r in _lines(out)]  # every line parses, each record once
    assert got == [f"req_{i}" for i in range(6)]
    stream = RecordStream(record_files(out))
    assert [r["id"] for _, r in stream] == got and stream.malformed_lines == 0


def test_a_recreated_stream_is_exported_from_its_start(
    redis_server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "stream.jsonl"
    assert _run(redis_server, out) == 0  # no stream yet: nothing, and a first cursor
    assert "exported 0 records" in capsys.readouterr().out
    assert (tmp_path / "stream.jsonl.cursor").read_text() == "0-0 0\n"
    for i in range(2):
        _add(redis_server, _request(f"old{i}"), f"2000000000000-{i}")
    assert _run(redis_server, out) == 0
    # Redis restarted without its data, on a clock behind the old entries' ids
    redis_server.client.delete(STREAM)
    for i in range(2):
        _add(redis_server, _request(f"new{i}"), f"1999999999000-{i}")
    capsys.readouterr()
    assert _run(redis_server, out) == 0
    assert "it was recreated" in capsys.readouterr().err
    assert [r["id"] for r in _lines(out)] == ["old0", "old1", "new0", "new1"]


def test_a_stream_trimmed_past_the_cursor_is_reported(
    redis_server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = redis_server.client
    out = tmp_path / "stream.jsonl"
    for i in range(5):
        client.xadd("older", {"record": orjson.dumps({"type": "request", "id": f"o{i}"})})
    client.xtrim("older", maxlen=2, approximate=False)
    argv = [
        "--redis-url",
        redis_server.url,
        "--stream",
        "older",
        "--out",
        str(tmp_path / "o.jsonl"),
    ]
    assert export_main(argv) == 0
    assert "3 records left the stream before this first export" in capsys.readouterr().err
    for i in range(3):
        client.xadd(STREAM, {"record": orjson.dumps({"type": "request", "id": f"a{i}"})})
    assert _run(redis_server, out) == 0
    assert capsys.readouterr().err == ""
    for i in range(5):
        client.xadd(STREAM, {"record": orjson.dumps({"type": "request", "id": f"b{i}"})})
    client.xtrim(STREAM, maxlen=2, approximate=False)  # b0-b2 are gone before they were exported
    assert _run(redis_server, out) == 0
    assert "no longer holds the last exported record" in capsys.readouterr().err
    assert [r["id"] for r in _lines(out)] == ["a0", "a1", "a2", "b3", "b4"]


@pytest.mark.parametrize(
    "url",
    [
        "redis://:pa/ss-word@127.0.0.1:1/0",  # an unencoded "/" in the password
        "redis+cluster://:pa/ss-word@127.0.0.1:1",
        "redis+sentinel://:pa?ss-word@127.0.0.1:26379/master",
    ],
)
def test_a_malformed_url_is_refused_without_quoting_it(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--redis-url", url, "--stream", STREAM, "--out", str(tmp_path / "s.jsonl")]
    assert export_main(argv) in (1, 2)
    err = capsys.readouterr().err
    assert "is not a Redis URL" in err and "pa" not in err.replace("password", ""), err


def test_errors_are_clear_and_never_show_the_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s3cret-pass"
    url = f"redis://:{secret}@127.0.0.1:{closed_port()}/0"
    out = tmp_path / "stream.jsonl"
    assert export_main(["--redis-url", url, "--stream", STREAM, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Redis failed (ConnectionError)" in err and secret not in err and url not in err
    assert not out.exists()

    # the settings' environment variables are the defaults
    monkeypatch.setenv("EFFGATE_REDIS_URL", url)
    monkeypatch.setenv("EFFGATE_RECORDS_REDIS_STREAM", STREAM)
    assert export_main(["--out", str(out)]) == 1
    assert secret not in capsys.readouterr().err

    (tmp_path / "stream.jsonl.cursor").write_text("garbage\n")
    assert export_main(["--out", str(out)]) == 1
    assert "not a stream entry id and size" in capsys.readouterr().err

    monkeypatch.delenv("EFFGATE_RECORDS_REDIS_STREAM")
    for argv in (["--out", str(out)], ["--stream", STREAM, "--out", str(tmp_path / "x.txt")]):
        with pytest.raises(SystemExit) as exc:
            export_main(argv)
        assert exc.value.code == 2
    assert secret not in capsys.readouterr().err


def test_the_gateway_trims_the_stream_to_its_maxlen(
    make_gateway: GatewayFactory, redis_server: RedisServer, small: FakeUpstreamHandle
) -> None:
    # MAXLEN ~ trims whole nodes of the stream: two entries a node make it near exact
    redis_server.client.config_set("stream-node-max-entries", 2)
    gw = make_gateway(
        redis_url=redis_server.url, records_redis_stream=STREAM, records_stream_maxlen=3
    )
    with gw.http() as c:
        ids = [
            c.post("/v1/chat/completions", json=chat()).headers["x-effgate-request-id"]
            for _ in range(12)
        ]
    wait_until(lambda: len(gw.records()) == 12, what="twelve records")

    def newest() -> list[str]:
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], redis_server.client.xrange(STREAM))
        return [orjson.loads(fields[b"record"])["id"] for _, fields in entries]

    wait_until(lambda: newest()[-1:] == ids[-1:], what="the last record in the stream")
    kept = newest()
    assert 3 <= len(kept) <= 5 and kept == ids[-len(kept) :]


class _CountingClient:
    """The real client, with the COUNT of every XRANGE noted (a seam for the batch size)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.counts: list[int] = []

    async def xrange(self, *args: Any, count: int, **kw: Any) -> Any:
        self.counts.append(count)
        return await self._client.xrange(*args, count=count, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_batches_are_bounded_in_bytes(redis_server: RedisServer, tmp_path: Path) -> None:
    for i in range(12):
        rec = {"type": "request", "id": f"r{i}", "prompt": "x" * 990}  # about 1 KB a line
        _add(redis_server, {"record": orjson.dumps(rec)})
    client = _CountingClient(connect(redis_server.url, 2.0))
    out = tmp_path / "stream.jsonl"

    async def run() -> Exported:
        try:
            return await export(client, STREAM, out, tmp_path / "stream.jsonl.cursor", 1000, 3000)
        finally:
            await client.aclose()

    done = asyncio.run(run())
    assert done.written == 12 and [r["id"] for r in _lines(out)] == [f"r{i}" for i in range(12)]
    # one entry first, then as many as 3,000 bytes hold at the mean size seen
    assert client.counts[0] == 1 and set(client.counts[1:-1]) == {2}
