"""Request logs for the records readers' tests, shared by `effgate train` and `effgate report`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson


def request(rid: str, **kw: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"type": "request", "id": rid, "time": "2026-11-01T00:00:00Z",
                           "model": "m", "cost_usd": 0.01, "prompt": f"Q {rid}?"}  # fmt: skip
    rec.update(kw)
    return rec


def feedback(rid: str, accepted: bool | None = None, score: float | None = None) -> dict[str, Any]:
    return {"type": "feedback", "request_id": rid, "accepted": accepted, "score": score}


def write(path: Path, *records: dict[str, Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def accept_then_reject(folder: Path) -> Path:
    """`a` accepted in the older `records.jsonl.1`, then rejected in the newer `records.jsonl`."""
    folder.mkdir(parents=True, exist_ok=True)
    write(folder / "records.jsonl.1", request("a"), feedback("a", accepted=True))
    write(folder / "records.jsonl", request("b"), feedback("a", accepted=False))
    return folder
