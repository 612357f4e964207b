"""``effgate records export``: the Redis record stream into a JSON Lines file.

    effgate records export --out DIR/stream.jsonl [--redis-url URL] [--stream NAME]

Replicas configured with ``EFFGATE_RECORDS_REDIS_STREAM`` add every request, feedback and
label record to one Redis stream (``XADD``, one field ``record``: the record's JSON, trimmed
to about ``EFFGATE_RECORDS_STREAM_MAXLEN`` entries, 1,000,000 by default). ``effgate train --records`` and ``effgate report`` read files;
this command appends the stream's records to ``--out``, one per line, in stream order, so
``effgate train --records DIR`` reads them with the replicas' record files or alone.

Incremental: the last exported entry's id is kept in ``OUT.cursor`` (written after the
lines it covers are on disk), and the next run starts after it, so it can run from cron. A
run cut off between the two re-exports at most one batch: readers keep the last record of a
repeated request id, so a repeated line changes nothing (a line cut in half is dropped
first). A stream trimmed past the cursor
(records the stream dropped before they were exported) is reported; entries without a
``record`` field holding one JSON object are skipped and counted. The Redis URL (a secret:
it may hold a password) is never printed. Exit status 0, 1 on a Redis or file error, 2 on a
usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from redis.exceptions import RedisError

from gateway.redis_client import connect

BATCH = 1000
TIMEOUT_S = 10.0


@dataclass
class Exported:
    written: int = 0
    skipped: int = 0
    last_id: str | None = None
    lost: str | None = None  # what the stream dropped before this run could export it


def _parse_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _line(fields: Any) -> bytes | None:
    """The entry's record as one line, or None when it is not a JSON object."""
    if not isinstance(fields, dict):
        return None
    payload = fields.get(b"record", fields.get("record"))
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    if not isinstance(payload, bytes) or b"\n" in payload:
        return None
    try:
        record = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return payload + b"\n" if isinstance(record, dict) else None


def _write_cursor(path: Path, entry_id: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="ascii") as fh:
        fh.write(entry_id + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_cursor(path: Path) -> str | None:
    """The last exported id, or None for a first export; ValueError on a damaged file."""
    if not path.exists():
        return None
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        _parse_id(text)
    except ValueError:
        raise ValueError(f"{path}: not a stream entry id: {text[:40]!r}") from None
    return text


def drop_partial_line(path: Path) -> int:
    """Cut a last line without its newline (a run killed mid-write; its batch is exported
    again, the cursor never covered it) so the next line does not join it; bytes cut."""
    if not path.exists():
        return 0
    with path.open("r+b") as fh:
        size = end = fh.seek(0, os.SEEK_END)
        while end > 0:
            start = max(0, end - 65536)
            fh.seek(start)
            at = fh.read(end - start).rfind(b"\n")
            if at >= 0:
                keep = start + at + 1
                break
            end = start
        else:
            keep = 0
        fh.truncate(keep)
    return size - keep


def _as_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _losses(client: Any, stream: str, cursor: str | None) -> str | None:
    """What the stream dropped before this export could read it, or None. The gateway's
    ``XADD ... MAXLEN ~`` trims the oldest entries first, so: on a first export, entries
    added but no longer held; later, the last exported entry gone while newer ones remain
    (or one newer than it deleted, Redis 7's ``max-deleted-entry-id``)."""
    try:
        info = await client.xinfo_stream(stream)
    except RedisError:  # no such stream (yet): nothing to lose
        return None

    def field(name: str) -> Any:
        return info.get(name, info.get(name.encode()))

    added, length = field("entries-added"), field("length")
    if cursor is None:
        if isinstance(added, int) and isinstance(length, int) and added > length:
            return f"{added - length} records left the stream before this first export"
        return None
    deleted = field("max-deleted-entry-id")
    if deleted is not None and _parse_id(_as_str(deleted)) > _parse_id(cursor):
        return "records newer than the last export were deleted from the stream"
    first = field("first-entry")
    newer = bool(first) and _parse_id(_as_str(first[0])) > _parse_id(cursor)
    if newer and not await client.xrange(stream, min=cursor, max=cursor):
        return (
            "the stream no longer holds the last exported record: records written after it "
            "may have been trimmed before this export"
        )
    return None


async def export(
    client: Any, stream: str, out: Path, cursor_path: Path, batch: int = BATCH
) -> Exported:
    """Append the stream's entries after the cursor to ``out``; the cursor follows each batch."""
    cursor = read_cursor(cursor_path)
    drop_partial_line(out)
    done = Exported(lost=await _losses(client, stream, cursor))
    start = "-" if cursor is None else f"({cursor}"
    with out.open("ab") as fh:
        while True:
            entries = await client.xrange(stream, min=start, max="+", count=batch)
            if not entries:
                return done
            lines = []
            for _, fields in entries:
                line = _line(fields)
                if line is None:
                    done.skipped += 1
                else:
                    lines.append(line)
            fh.write(b"".join(lines))
            fh.flush()
            os.fsync(fh.fileno())
            done.written += len(lines)
            done.last_id = _as_str(entries[-1][0])
            _write_cursor(cursor_path, done.last_id)
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
    except ValueError as exc:  # a malformed sentinel or cluster URL; the message has no secret
        print(f"effgate records export: bad --redis-url: {exc}", file=sys.stderr)
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
    except (OSError, ValueError) as exc:
        print(f"effgate records export: {exc}", file=sys.stderr)
        return 1
    if done.lost:
        print(
            f"effgate records export: {done.lost} (the gateways trim it to about "
            "EFFGATE_RECORDS_STREAM_MAXLEN records, 1,000,000 by default: export more often)",
            file=sys.stderr,
        )
    print(
        f"exported {done.written} records to {args.out}"
        + (f" ({done.skipped} entries skipped: not a record)" if done.skipped else "")
        + (f"; cursor {done.last_id}" if done.last_id else "; nothing new")
    )
    return 0
