"""``effgate records export``: the Redis record stream into a JSON Lines file.

    effgate records export --out DIR/stream.jsonl [--redis-url URL] [--stream NAME]

Replicas configured with ``EFFGATE_RECORDS_REDIS_STREAM`` add every request, feedback and
label record to one Redis stream (``XADD``, one field ``record``: the record's JSON, trimmed
to about ``EFFGATE_RECORDS_STREAM_MAXLEN`` entries, 1,000,000 by default). ``effgate train
--records`` and ``effgate report`` read files; this command appends the stream's records to
``--out``, one per line, in stream order, so they read them with the replicas' record files
or alone.

Incremental and exactly once: ``OUT.cursor`` holds the last exported entry's id and the
size of ``--out`` once its lines were on disk (file and cursor each fsynced, the cursor
replaced atomically). The next run first cuts ``--out`` back to that size (what a run cut
off wrote after its last cursor, half lines included), then appends what follows the id,
so it can run from cron. A first run writes its cursor before anything else (id ``0-0``,
the file's size then). Reported on stderr, never fatal: records the stream dropped before
they were exported (trimmed past the cursor), and a stream whose newest id is below the
cursor (recreated: Redis restarted without persistence, or another Redis), which is then
exported from its start. Entries without a ``record`` field holding one JSON object are
skipped and counted. The Redis URL (a secret: it may hold a password) is never printed, nor
any error text that could quote it. Exit status 0, 1 on a Redis or file error, 2 on a usage
error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from redis.exceptions import RedisError

from gateway.redis_client import connect

BATCH = 1000
# one XRANGE reply is read whole: the first asks for one entry, each next one for as many as
# fit in this many bytes at the last batch's mean size (records that log prompts can be large)
BATCH_BYTES = 16 * 1024 * 1024
TIMEOUT_S = 10.0


@dataclass
class Exported:
    written: int = 0
    skipped: int = 0
    last_id: str | None = None
    cut: int = 0  # bytes a cut-off run had written past its last cursor, removed
    notes: list[str] = field(default_factory=list)  # for stderr: records lost, a recreated stream


def _parse_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _line(fields: Any) -> bytes | None:
    """The entry's record as one line, or None when it is not a JSON object."""
    payload = fields.get(b"record") if isinstance(fields, dict) else None
    if not isinstance(payload, bytes) or b"\n" in payload:
        return None
    try:
        record = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return payload + b"\n" if isinstance(record, dict) else None


class CursorError(ValueError):
    """The cursor file is not one this command wrote."""


FIRST = "0-0"  # the cursor of a first run: every entry id is above it


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_cursor(path: Path, entry_id: str, size: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="ascii") as fh:
        fh.write(f"{entry_id} {size}\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def read_cursor(path: Path) -> tuple[str, int] | None:
    """(last exported id, --out's size after it), or None for a first export; CursorError on
    a damaged file."""
    if not path.exists():
        return None
    text = path.read_text(encoding="ascii", errors="replace").strip()
    entry_id, _, size = text.partition(" ")
    try:
        _parse_id(entry_id)
        committed = int(size)
    except ValueError:
        raise CursorError(f"{path}: not a stream entry id and size: {text[:40]!r}") from None
    if committed < 0:
        raise CursorError(f"{path}: negative size {committed}")
    return entry_id, committed


def _as_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _losses(client: Any, stream: str, info: Any, cursor: str) -> str | None:
    """What the stream dropped before this export could read it, or None. The gateway's
    ``XADD ... MAXLEN ~`` trims the oldest entries first, so: on a first export, entries
    added but no longer held; later, the last exported entry gone while newer ones remain
    (or one newer than it deleted, Redis 7's ``max-deleted-entry-id``)."""
    added, length = info.get("entries-added"), info.get("length")
    if cursor == FIRST:
        if isinstance(added, int) and isinstance(length, int) and added > length:
            return f"{added - length} records left the stream before this first export"
        return None
    deleted = info.get("max-deleted-entry-id")
    if deleted is not None and _parse_id(_as_str(deleted)) > _parse_id(cursor):
        return "records newer than the last export were deleted from the stream"
    first = info.get("first-entry")
    newer = bool(first) and _parse_id(_as_str(first[0])) > _parse_id(cursor)
    if newer and not await client.xrange(stream, min=cursor, max=cursor):
        return (
            "the stream no longer holds the last exported record: records written after it "
            "may have been trimmed before this export"
        )
    return None


def _prepare(out: Path, cursor_path: Path) -> tuple[str, bool, Exported]:
    """(the cursor, whether this is a first run, what to report): a first run writes its
    cursor; a later one cuts ``out`` back to the size its cursor recorded."""
    found = read_cursor(cursor_path)
    size = out.stat().st_size if out.exists() else 0
    done = Exported()
    if found is None:
        _write_cursor(cursor_path, FIRST, size)
        return FIRST, True, done
    cursor, committed = found
    if size > committed:
        with out.open("r+b") as fh:  # what a cut-off run wrote after its last cursor
            fh.truncate(committed)
            os.fsync(fh.fileno())
        done.cut = size - committed
    elif size < committed:
        done.notes.append(
            f"{out} is shorter than when the cursor was written (edited or replaced?); "
            "appending to it as it is"
        )
    return cursor, False, done


async def export(
    client: Any,
    stream: str,
    out: Path,
    cursor_path: Path,
    batch: int = BATCH,
    batch_bytes: int = BATCH_BYTES,
) -> Exported:
    """Append the stream's entries after the cursor to ``out``; the cursor follows each batch."""
    cursor, first_run, done = _prepare(out, cursor_path)
    try:
        info = await client.xinfo_stream(stream)
    except RedisError as exc:
        if "no such key" not in str(exc).lower():
            raise
        return done  # no stream (yet): nothing to export
    newest = info.get("last-generated-id")
    if cursor != FIRST and newest is not None and _parse_id(_as_str(newest)) < _parse_id(cursor):
        done.notes.append(
            "the stream's newest id is below the cursor: it was recreated (Redis restarted "
            "without persistence, or this is another Redis); exporting it from its start"
        )
        cursor = FIRST
    elif (lost := await _losses(client, stream, info, cursor)) is not None:
        done.notes.append(lost)
    start, count = f"({cursor}", 1  # then as many as fit in batch_bytes, up to batch
    with out.open("ab") as fh:
        if first_run:
            _fsync_dir(out.parent)  # the file a first run may have created
        while True:
            entries = await client.xrange(stream, min=start, max="+", count=count)
            if not entries:
                return done
            lines = []
            for _, fields in entries:
                line = _line(fields)
                if line is None:
                    done.skipped += 1
                else:
                    lines.append(line)
            data = b"".join(lines)
            mean = max(1, len(data) // max(1, len(lines)))
            count = max(1, min(batch, batch_bytes // mean))
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
            done.written += len(lines)
            done.last_id = _as_str(entries[-1][0])
            _write_cursor(cursor_path, done.last_id, fh.tell())
            start = f"({done.last_id}"


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="effgate records export",
        description="Append the Redis record stream's records to a JSON Lines file.",
    )
    parser.add_argument("--out", type=Path, required=True, help="the .jsonl file to append to")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("EFFGATE_REDIS_URL"),
        help="default: $EFFGATE_REDIS_URL (never printed: it may hold a password)",
    )
    parser.add_argument(
        "--stream",
        default=os.environ.get("EFFGATE_RECORDS_REDIS_STREAM"),
        help="default: $EFFGATE_RECORDS_REDIS_STREAM",
    )
    parser.add_argument("--batch", type=int, default=BATCH, help="entries per XRANGE")
    args = parser.parse_args(argv)
    if not args.redis_url or not args.stream:
        parser.error("needs --redis-url and --stream (or EFFGATE_REDIS_URL and "
                     "EFFGATE_RECORDS_REDIS_STREAM)")  # fmt: skip
    if args.batch < 1:
        parser.error("--batch must be at least 1")
    if not args.out.name.endswith(".jsonl"):
        parser.error("--out must name a .jsonl file (the name the record readers look for)")
    cursor_path = args.out.with_name(args.out.name + ".cursor")
    try:
        client = connect(args.redis_url, TIMEOUT_S)
    except ValueError:  # its text can quote part of the URL, the password's included
        print(
            "effgate records export: --redis-url is not a Redis URL (check its form, and "
            "percent-encode / ? # @ : in the password)",
            file=sys.stderr,
        )
        return 2

    async def run() -> Exported:
        try:
            return await export(client, args.stream, args.out, cursor_path, args.batch)
        finally:
            await client.aclose()

    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        done = asyncio.run(run())
    except RedisError as exc:
        # the exception's text can carry the URL's host and, for some errors, its userinfo
        print(f"effgate records export: Redis failed ({type(exc).__name__})", file=sys.stderr)
        return 1
    except ValueError as exc:  # a damaged cursor, or redis-py parsing the URL late
        if isinstance(exc, CursorError):
            print(f"effgate records export: {exc}", file=sys.stderr)
        else:
            print("effgate records export: --redis-url is not a Redis URL", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"effgate records export: {exc}", file=sys.stderr)
        return 1
    for note in done.notes:
        print(f"effgate records export: {note}", file=sys.stderr)
    if done.cut:
        print(
            f"effgate records export: removed {done.cut} bytes a cut-off run had written past "
            "its cursor (exported again now)",
            file=sys.stderr,
        )
    print(
        f"exported {done.written} records to {args.out}"
        + (f" ({done.skipped} entries skipped: not a record)" if done.skipped else "")
        + (f"; cursor {done.last_id}" if done.last_id else "; nothing new")
    )
    return 0
