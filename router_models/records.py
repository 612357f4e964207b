"""Gateway request records -> labelled rows (see docs/contracts.md, "Request records").

Feedback records are joined onto request records by id (the last one for an id counts).
A request gives one (prompt, model, score) label: `score` when sent, else 1/0 from
`accepted`. Requests without a prompt or without feedback are skipped and counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router_models.data import DataError, Result, Row


@dataclass(frozen=True, slots=True)
class RecordsSummary:
    requests: int
    labelled: int
    skipped_no_prompt: int
    skipped_no_feedback: int
    bad_lines: int


def record_files(path: Path) -> list[Path]:
    """A file, or every `*.jsonl*` in a directory (rotated files included)."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and ".jsonl" in p.name)
    if path.is_file():
        return [path]
    raise DataError(f"{path}: no such records file or directory")


def _label(feedback: dict[str, Any]) -> float | None:
    score = feedback.get("score")
    if isinstance(score, int | float) and not isinstance(score, bool) and 0 <= score <= 1:
        return float(score)
    accepted = feedback.get("accepted")
    if isinstance(accepted, bool):
        return 1.0 if accepted else 0.0
    return None


def load_records(path: Path) -> tuple[list[Row], RecordsSummary]:
    requests: dict[str, dict[str, Any]] = {}
    feedback: dict[str, dict[str, Any]] = {}
    bad = 0
    for file in record_files(path):
        with file.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    bad += 1
                    continue
                if not isinstance(obj, dict):
                    bad += 1
                elif obj.get("type") == "request" and isinstance(obj.get("id"), str):
                    requests[obj["id"]] = obj
                elif obj.get("type") == "feedback" and isinstance(obj.get("request_id"), str):
                    feedback[obj["request_id"]] = obj
    by_prompt: dict[str, dict[str, list[float]]] = {}
    tasks: dict[str, str] = {}
    no_prompt = no_feedback = labelled = 0
    for rid, req in requests.items():
        prompt = req.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            no_prompt += 1
            continue
        label = _label(feedback[rid]) if rid in feedback else None
        model = req.get("model")
        if label is None or not isinstance(model, str):
            no_feedback += 1
            continue
        labelled += 1
        by_prompt.setdefault(prompt, {}).setdefault(model, []).append(label)
        tasks.setdefault(prompt, str(req.get("task") or "records"))
    # one row per distinct prompt; repeated (prompt, model) labels are averaged
    rows = [
        Row(
            id=f"records:{k}",
            source="records",
            task=tasks[prompt],
            messages=({"role": "user", "content": prompt},),
            results={m: Result(score=sum(v) / len(v)) for m, v in models.items()},
            prompt_chars=len(prompt),
        )
        for k, (prompt, models) in enumerate(by_prompt.items())
    ]
    summary = RecordsSummary(len(requests), labelled, no_prompt, no_feedback, bad)
    return rows, summary
