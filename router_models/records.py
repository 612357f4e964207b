"""Gateway request records: the one reader of the log, and labelled rows from it.

The format is docs/contracts.md, "Request records". Two readers use this module: `effgate
train --records` (`load_examples` here) and `effgate report` (`gateway.report.data`, which
keeps its own compact columns but takes its files and records from here), so both see the
same records in the same order:

- `record_files(path)`: a file as given, or every `*.jsonl` and `*.jsonl.N` in a directory,
  oldest first: the gateway rotates `records.jsonl` to `records.jsonl.1`, `.1` to `.2`, ...,
  so a higher N is older (numerically: `.10` before `.2`). Several bases (two replicas' logs)
  are read one after the other, by name.
- `RecordStream(files)`: every request, feedback and label record in that log order, streamed line
  by line (a log can be hundreds of MB). Lines it cannot use are counted, never fatal;
  requests from the `explain` endpoint (a routing decision shown, nothing served) are
  skipped and counted. A record without `endpoint` is from an older log: a chat request.

Feedback and judge labels join onto requests by id, and the last one in log order wins. A
repeated request id (a client may reuse `x-request-id`) keeps its last record, as the
gateway's feedback join and `effgate report` do.
For training (`load_examples`), a chat request gives one example: its signature (recorded,
or computed from a logged prompt) and a score per labelled model: feedback's `score` when
sent, else 1/0 from `accepted`, for the model that served it; the shadow judge's grades for
the served and the comparison models. Other requests (embeddings), requests without a
signature or prompt and requests without labels are skipped and counted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import orjson

from router_models.data import DataError
from router_models.features import DENSE_NAMES
from router_models.learner import Example
from router_models.signature import Signature, signature

_HAS_SYSTEM = DENSE_NAMES.index("has_system")

ROTATED_NAME = re.compile(r"^(?P<base>.+\.jsonl)(?:\.(?P<n>\d+))?$")
IGNORED_ENDPOINTS = frozenset({"explain"})
Kind = Literal["request", "feedback", "label"]


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
    labels: int = 0
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
                elif kind == "label":
                    if type(rec.get("request_id")) is not str or type(rec.get("model")) is not str:
                        self._bad(file, "label without a string request_id and model")
                        continue
                    file.labels += 1
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
        elif self._yielded == "label":
            file.labels -= 1
        self._yielded = None
        self._bad(file, why)

    def _bad(self, file: FileCounts, why: str) -> None:
        file.malformed += 1
        if len(self.examples) < self._max_examples:
            self.examples.append(f"{file.path.name}:{file.lines}: {why}")


@dataclass(frozen=True, slots=True)
class RecordsSummary:
    """What `load_examples` found: requests, labelled examples, labels by source, skips."""

    requests: int
    labelled: int
    labels_feedback: int
    labels_judge: int
    skipped_no_signature: int
    skipped_no_label: int
    bad_lines: int
    skipped_not_chat: int = 0
    ignored_explain: int = 0
    # labelled requests with a system prompt whose version-1 signature holds feature version
    # 5's dense part (its text features read the system prompt too): used, and counted
    older_system_dense: int = 0
    # labelled requests left out by `max_examples` (the oldest, in log order)
    beyond_cap: int = 0


class _Outcome(NamedTuple):
    """What one request id's last record gave `load_examples`: ``why`` ("ok", or the skip:
    "not_chat", "no_label", "no_sig", "bad", "beyond_cap"), the example, and its label and
    version counts."""

    why: str
    example: Example | None = None
    feedback: int = 0  # 1: the served model's label is feedback's
    judged: int = 0  # models the shadow judge graded
    older: int = 0  # 1: a version-1 signature with a system prompt (older_system_dense)


def _label(feedback: dict[str, Any]) -> float | None:
    score = feedback.get("score")
    if isinstance(score, int | float) and not isinstance(score, bool) and 0 <= score <= 1:
        return float(score)
    accepted = feedback.get("accepted")
    if isinstance(accepted, bool):
        return 1.0 if accepted else 0.0
    return None


def _signed(req: dict[str, Any]) -> bool:
    """Whether the request has what `_signature` reads: a signature, or a logged prompt."""
    prompt = req.get("prompt")
    return req.get("signature") is not None or (isinstance(prompt, str) and bool(prompt))


def _signature(req: dict[str, Any]) -> Signature | None:
    """The request's signature: the recorded one, else computed from a logged prompt."""
    raw = req.get("signature")
    if raw is not None:
        return Signature.from_json(raw)  # ValueError: the caller counts a malformed line
    prompt = req.get("prompt")
    if isinstance(prompt, str) and prompt:
        return signature([{"role": "user", "content": prompt}])
    return None


def load_examples(
    path: Path, max_examples: int | None = None
) -> tuple[list[Example], RecordsSummary]:
    """Labelled examples from a records file or directory, and what was skipped.
    ``max_examples``: keep the newest that many, by the ``time`` of each request id's last
    record (log order between equal times: files by name, so replicas' logs interleave by
    time), the others counted in ``beyond_cap``; only the kept ones' signatures are read.

    Two passes over the log (three with a cap): the first collects labels by request id
    (feedback for the served model, the last in log order winning; judge labels per model,
    the last per model winning; feedback, a person's verdict, wins over a judge's grade of
    the same model); with a cap, the next finds where and when each labelled id's last
    request record is; the last builds one example per labelled chat request from its
    signature. Memory holds the labels, the labelled ids' outcomes and their signatures (up
    to ``max_examples``), never the whole log: a request no label names is counted, not
    kept (a repeated one, once per record)."""
    files = record_files(path)
    feedback: dict[str, float] = {}
    judged: dict[str, dict[str, float]] = {}
    for kind, rec in RecordStream(files):
        if kind == "feedback":
            label = _label(rec)
            if label is not None:  # neither score nor accepted changes nothing
                feedback[rec["request_id"]] = label
        elif kind == "label":
            score = rec.get("score")
            if isinstance(score, int | float) and not isinstance(score, bool) and 0 <= score <= 1:
                judged.setdefault(rec["request_id"], {})[rec["model"]] = float(score)
    keep: set[str] | None = None
    if max_examples is not None:
        # per labelled id, its last request record's time, place in the log, and whether it
        # can make an example (a chat request with a signature or a prompt, and the model
        # feedback labels)
        final: dict[str, tuple[str, int, bool, bool]] = {}
        for at, (kind, rec) in enumerate(RecordStream(files)):
            rid = rec.get("id") if kind == "request" else None
            if rid is None or (rid not in feedback and rid not in judged):
                continue
            when, chat = rec.get("time"), (rec.get("endpoint") or "chat") == "chat"
            final[rid] = (when if isinstance(when, str) else "", at, chat and _signed(rec),
                          isinstance(rec.get("model"), str))  # fmt: skip
        candidates = [
            (when, at, rid)
            for rid, (when, at, usable, has_model) in final.items()
            if usable and (rid in judged or (rid in feedback and has_model))
        ]
        candidates.sort()
        keep = {rid for _, _, rid in candidates[len(candidates) - max_examples :]}
        del final, candidates
    stream = RecordStream(files)
    # per request id, what its last record gave: an example, or why none (a repeated id,
    # e.g. a client that reuses x-request-id, keeps its last record, as the gateway's
    # feedback join and `effgate report` do)
    last: dict[str, _Outcome] = {}
    unlabelled = {"not_chat": 0, "no_label": 0}  # records of ids no label names
    for kind, rec in stream:
        if kind != "request":
            continue
        rid = rec["id"]
        if rid not in feedback and rid not in judged:
            unlabelled["not_chat" if (rec.get("endpoint") or "chat") != "chat" else "no_label"] += 1
            continue
        last.pop(rid, None)
        if (rec.get("endpoint") or "chat") != "chat":
            last[rid] = _Outcome("not_chat")  # embeddings: spend, but no prompt
            continue
        labels = dict(judged.get(rid, {}))
        model = rec.get("model")
        if rid in feedback and isinstance(model, str):
            labels[model] = feedback[rid]
        if not labels:
            last[rid] = _Outcome("no_label")
            continue
        fed = int(rid in feedback and isinstance(model, str))
        if not _signed(rec):
            last[rid] = _Outcome("no_sig")
            continue
        if keep is not None and rid not in keep:  # older than the newest max_examples
            last[rid] = _Outcome("beyond_cap", feedback=fed, judged=len(judged.get(rid, {})))
            continue
        try:
            sig = _signature(rec)
        except ValueError as exc:
            stream.malformed(f"signature: {exc}")
            last[rid] = _Outcome("bad")
            continue
        if sig is None:
            last[rid] = _Outcome("no_sig")
            continue
        raw = rec.get("signature")
        older = int(isinstance(raw, dict) and raw.get("v") == 1 and sig.dense[_HAS_SYSTEM] > 0)
        task = rec.get("task")
        tag = task if isinstance(task, str) else ""
        last[rid] = _Outcome(
            "ok",
            Example(sig=sig, labels=labels, group=sig.digest, tag=tag),
            feedback=fed,
            judged=len(judged.get(rid, {})),
            older=older,
        )
    outcomes = list(last.values())
    examples = [o.example for o in outcomes if o.example is not None]
    why = [o.why for o in outcomes]
    summary = RecordsSummary(
        requests=len(outcomes) + sum(unlabelled.values()),
        labelled=len(examples) + why.count("beyond_cap"),
        labels_feedback=sum(o.feedback for o in outcomes),
        labels_judge=sum(o.judged for o in outcomes),
        skipped_no_signature=why.count("no_sig"),
        skipped_no_label=why.count("no_label") + unlabelled["no_label"],
        bad_lines=stream.malformed_lines,
        skipped_not_chat=why.count("not_chat") + unlabelled["not_chat"],
        ignored_explain=stream.explain,
        older_system_dense=sum(o.older for o in outcomes),
        beyond_cap=why.count("beyond_cap"),
    )
    return examples, summary
