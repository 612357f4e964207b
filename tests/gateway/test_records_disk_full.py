"""A full disk loses no record silently and does not break shutdown."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from gateway.records import JSONLFile, RecordLog


def _full_disk_dir(tmp_path: Path) -> Path:
    if not os.path.exists("/dev/full"):
        pytest.fail("/dev/full is needed to simulate a full disk (Linux)")
    (tmp_path / "records.jsonl").symlink_to("/dev/full")
    return tmp_path


def test_failed_write_leaves_nothing_for_close(tmp_path: Path) -> None:
    f = JSONLFile(_full_disk_dir(tmp_path), max_bytes=1 << 20, backups=2)
    with pytest.raises(OSError):
        f.write(b'{"type":"request"}\n')
    f.close()  # must not raise ENOSPC again


def test_record_log_counts_file_drops_and_closes(tmp_path: Path) -> None:
    dropped: list[str] = []

    async def main() -> None:
        log = RecordLog(
            file=JSONLFile(_full_disk_dir(tmp_path), max_bytes=1 << 20, backups=2),
            on_drop=dropped.append,
            linger_s=0,
        )
        log.start()
        for i in range(3):
            log.emit({"type": "request", "id": str(i)})
        await log.aclose()

    anyio.run(main)
    assert dropped == ["file", "file", "file"]
