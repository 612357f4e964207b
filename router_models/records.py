"""Gateway request records: the one reader of the log, and labelled rows from it.

The format is docs/contracts.md, "Request records". Two readers use this module: `effgate
train --records` (`load_records` here) and `effgate report` (`gateway.report.data`, which
keeps its own compact columns but takes its files and records from here), so both see the
same records in the same order:

- `record_files(path)`: a file as given, or every `*.jsonl` and `*.jsonl.N` in a directory,
  oldest first: the gateway rotates `records.jsonl` to `records.jsonl.1`, `.1` to `.2`, ...,
  so a higher N is older (numerically: `.10` before `.2`). Several bases (two replicas' logs)
  are read one after the other, by name.
- `RecordStream(files)`: every request and feedback record in that log order, streamed line
  by line (a log can be hundreds of MB). Lines it cannot use are counted, never fatal;
  requests from the `explain` endpoint (a routing decision shown, nothing served) are
  skipped and counted. A record without `endpoint` is from an older log: a chat request.

Feedback joins onto requests by id, and the last one in log order wins. For training, a
request gives one (prompt, model, score) label: `score` when sent, else 1/0 from `accepted`.
Only chat requests carry a prompt; other requests (embeddings), requests without a prompt
and requests without feedback are skipped and counted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from router_models.data import DataError, Result, Row

ROTATED_NAME = re.compile(r"^(?P<base>.+\.jsonl)(?:\.(?P<n>\d+))?$")
IGNORED_ENDPOINTS = frozenset({"explain"})
Kind = Literal["request", "feedback"]


class RecordsError(DataError):
    """The records path is missing, unreadable, or holds no records files."""


class Malformed(Exception):
    """One line that is not a usable record; the message says why (never the line itself)."""


def record_files(path: Path) -> list[Path]:
    """The files to read, oldest first: a file as given, or every `*.jsonl[.N]` in a directory."""
    if not path.exists():
        raise RecordsError(f"records path not found: {path}")
    if path.is_file():
        return [path]
    found: list[tuple[str, int, Path]] = []
    for child in path.iterdir():
        match = ROTATED_NAME.match(child.name)
        if match and child.is_file():
            found.append((match["base"], -int(match["n"] or 0), child))
    if not found:
        raise RecordsError(f"no *.jsonl files in {path}")
    return [p for _, _, p in sorted(found)]


def _lines(path: Path) -> Iterator[bytes]:
    try:
        with path.open("rb") as handle:
            yield from handle
    except OSError as exc:
        raise RecordsError(f"cannot read {path}: {exc.strerror}") from None


@dataclass(slots=True)
class FileCounts:
    """What one file held: lines (blank ones too), the requests and feedback records
    yielded from it, and its malformed lines."""

    path: Path
    lines: int = 0
    requests: int = 0
    feedback: int = 0
    malformed: int = 0


class RecordStream:
    """Iterate for `(kind, record)`: every request and feedback record of `files`, in order.

    Not yielded, but counted: blank lines; malformed lines (in `files[i].malformed`, the first
    `max_examples` as `"name:line: why"` in `examples`): invalid JSON, not an object, a request
    without a string `id`, feedback without a string `request_id`; `explain` requests
    (`explain`) and records of other types (`other`). A consumer that finds a yielded record
    unusable calls `malformed(why)`, which counts it as a malformed line instead.
    """

    def __init__(self, files: Iterable[Path], *, max_examples: int = 20) -> None:
        self._paths = files
        self._max_examples = max_examples
        self.files: list[FileCounts] = []
        self.examples: list[str] = []
        self.explain = 0
        self.other = 0
        self._yielded: Kind | None = None

    @property
    def malformed_lines(self) -> int:
        return sum(f.malformed for f in self.files)

    def __iter__(self) -> Iterator[tuple[Kind, dict[str, Any]]]:
        for path in self._paths:
            file = FileCounts(path)
            self.files.append(file)
            for lineno, raw in enumerate(_lines(path), start=1):
                file.lines = lineno
                if not raw.strip():
                    continue
                try:
                    rec = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    self._bad(file, "invalid JSON")
                    continue
                kind = rec.get("type") if type(rec) is dict else None
                if kind == "request":
                    if type(rec.get("id")) is not str:
                        self._bad(file, "id is not a string")
                        continue
                    if rec.get("endpoint") in IGNORED_ENDPOINTS:
                        self.explain += 1
                        continue
                    file.requests += 1
                elif kind == "feedback":
                    if type(rec.get("request_id")) is not str:
                        self._bad(file, "request_id is not a string")
                        continue
                    file.feedback += 1
                elif type(rec) is dict:
                    self.other += 1
                    continue
                else:
                    self._bad(file, "not a JSON object")
                    continue
                self._yielded = kind
                yield kind, rec
                self._yielded = None

    def malformed(self, why: str) -> None:
        """Count the record just yielded as a malformed line, for `why`."""
        file = self.files[-1]
        if self._yielded == "request":
            file.requests -= 1
        elif self._yielded == "feedback":
            file.feedback -= 1
        self._yielded = None
        self._bad(file, why)

    def _bad(self, file: FileCounts, why: str) -> None:
        file.malformed += 1
        if len(self.examples) < self._max_examples:
            self.examples.append(f"{file.path.name}:{file.lines}: {why}")


@dataclass(frozen=True, slots=True)
class RecordsSummary:
    requests: int
    labelled: int
    skipped_no_prompt: int
    skipped_no_feedback: int
    bad_lines: int
    skipped_not_chat: int = 0
    ignored_explain: int = 0


def _label(feedback: dict[str, Any]) -> float | None:
    score = feedback.get("score")
    if isinstance(score, int | float) and not isinstance(score, bool) and 0 <= score <= 1:
        return float(score)
    accepted = feedback.get("accepted")
    if isinstance(accepted, bool):
        return 1.0 if accepted else 0.0
    return None


def load_records(path: Path) -> tuple[list[Row], RecordsSummary]:
    """Labelled rows from a records file or directory, and what was skipped."""
    stream = RecordStream(record_files(path))
    requests: dict[str, dict[str, Any]] = {}
    labels: dict[str, float] = {}
    for kind, rec in stream:
        if kind == "request":
            requests[rec["id"]] = rec  # a repeated id: the last record counts
            continue
        label = _label(rec)
        if label is not None:  # feedback with neither score nor accepted changes nothing
            labels[rec["request_id"]] = label  # log order, oldest first: the last one wins
    by_prompt: dict[str, dict[str, list[float]]] = {}
    tasks: dict[str, str] = {}
    not_chat = no_prompt = no_feedback = labelled = 0
    for rid, req in requests.items():
        if (req.get("endpoint") or "chat") != "chat":
            not_chat += 1  # embeddings: real spend, but no prompt to learn from
            continue
        prompt = req.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            no_prompt += 1
            continue
        label = labels.get(rid)
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
    summary = RecordsSummary(
        requests=len(requests),
        labelled=labelled,
        skipped_no_prompt=no_prompt,
        skipped_no_feedback=no_feedback,
        bad_lines=stream.malformed_lines,
        skipped_not_chat=not_chat,
        ignored_explain=stream.explain,
    )
    return rows, summary
