"""Load request and feedback records (JSON Lines) into compact columns for `effgate report`.

The request log can be hundreds of MB, so lines are streamed and each request keeps only the
fields the report needs, in typed arrays; prompt text is never read into memory. The files and
their records come from `router_models.records`, the one reader of the log (rotated files
oldest first; `explain` requests, which served nothing, skipped and counted with the other
types); embeddings requests are spend like chat ones. Feedback is joined by request id once
every file has been read (the last feedback for an id wins, in log order). Malformed lines are
counted, never fatal.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

# the shared reader's names, re-exported for gateway.report.build and the report's tests
from router_models.records import Malformed as Malformed
from router_models.records import RecordsError as RecordsError
from router_models.records import RecordStream
from router_models.records import record_files as record_files

MAX_EXAMPLES = 20
NO_FEEDBACK, REJECTED, ACCEPTED = -1, 0, 1


@dataclass(frozen=True, slots=True)
class FileStats:
    path: str
    lines: int
    requests: int  # request records read (those before --since too; explain ones not)
    feedback: int
    malformed: int


@dataclass(frozen=True, slots=True)
class LoadStats:
    files: tuple[FileStats, ...]
    malformed: int
    malformed_examples: tuple[str, ...]
    other_types: int
    duplicate_requests: int
    outside_window: int
    feedback_records: int
    feedback_orphans: int
    feedback_empty: int
    feedback_by_score: int
    feedback_overridden: int


@dataclass(frozen=True, slots=True)
class Records:
    """One row per request; strings are codes into the vocab tuples (-1 = null)."""

    routes: tuple[str, ...]
    models: tuple[str, ...]
    tasks: tuple[str, ...]
    reasons: tuple[str, ...]
    rules: tuple[str, ...]
    time: NDArray[np.float64]  # epoch seconds
    route: NDArray[np.int32]
    model: NDArray[np.int32]
    task: NDArray[np.int32]
    reason: NDArray[np.int32]
    rule: NDArray[np.int32]
    status: NDArray[np.int32]
    failed: NDArray[np.bool_]  # status >= 400 or outcome != ok
    stream: NDArray[np.bool_]
    fallback: NDArray[np.bool_]  # fallback_from not empty
    attempts: NDArray[np.int32]
    cost: NDArray[np.float64]
    baseline: NDArray[np.float64]
    tokens_in: NDArray[np.float64]
    tokens_out: NDArray[np.float64]
    latency_ms: NDArray[np.float64]  # nan when null
    ttft_ms: NDArray[np.float64]
    p: NDArray[np.float64]
    bar: NDArray[np.float64]
    accepted: NDArray[np.int8]  # NO_FEEDBACK, REJECTED or ACCEPTED
    cand_offsets: NDArray[np.int64]  # row i owns cand_*[offsets[i]:offsets[i + 1]]
    cand_model: NDArray[np.int32]
    cand_p: NDArray[np.float64]
    cand_cost: NDArray[np.float64]
    cand_eligible: NDArray[np.bool_]
    # the prior's P (IRT link of the skill) beside the P the decision used; nan when absent
    cand_p_prior: NDArray[np.float64] | None = None

    @property
    def n(self) -> int:
        return int(self.time.shape[0])


def parse_time(value: object) -> float:
    if not isinstance(value, str):
        raise Malformed("time is not a string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise Malformed("time is not ISO 8601") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _number(value: object, key: str, default: float) -> float:
    if value is None:
        return default
    kind = type(value)  # NOTE: not isinstance: a bool is an int, and not a number here
    if kind is float or kind is int:
        return float(value)  # type: ignore[arg-type]
    raise Malformed(f"{key} is not a number")


def _text(value: object, key: str) -> str | None:
    if value is None or type(value) is str:
        return value
    raise Malformed(f"{key} is not a string")


class _Vocab:
    def __init__(self) -> None:
        self.codes: dict[str, int] = {}

    def code(self, value: str | None) -> int:
        if value is None:
            return -1
        code = self.codes.get(value)
        if code is None:
            code = self.codes[value] = len(self.codes)
        return code

    def names(self) -> tuple[str, ...]:
        return tuple(self.codes)


COLUMNS: tuple[tuple[str, str], ...] = (
    ("time", "d"), ("route", "i"), ("model", "i"), ("task", "i"), ("reason", "i"),
    ("rule", "i"), ("status", "i"), ("attempts", "i"), ("failed", "b"), ("stream", "b"),
    ("fallback", "b"), ("cost", "d"), ("baseline", "d"), ("tokens_in", "d"),
    ("tokens_out", "d"), ("latency_ms", "d"), ("ttft_ms", "d"), ("p", "d"), ("bar", "d"),
)  # fmt: skip
NAN = float("nan")


class _Builder:
    """Typed append-only columns (COLUMNS order); a record is validated whole before any
    column grows, so a malformed line leaves no partial row."""

    def __init__(self) -> None:
        self.vocab = {k: _Vocab() for k in ("route", "model", "task", "reason", "rule")}
        self.cols: tuple[array[Any], ...] = tuple(array(t) for _, t in COLUMNS)
        self.cand_offsets = array("q", [0])
        self.cand_model, self.cand_p, self.cand_cost = array("i"), array("d"), array("d")
        self.cand_p_prior = array("d")
        self.cand_eligible = array("b")
        self.keep = array("b")
        self.index: dict[str, int] = {}

    def add(self, rec: dict[str, Any], since: float | None) -> bool:
        row, cands = self._row(rec)
        if since is not None and row[0] < since:
            return False
        for col, value in zip(self.cols, row, strict=True):
            col.append(value)
        models = self.vocab["model"]
        for model, p, cost, eligible, p_prior in cands:
            self.cand_model.append(models.code(model))
            self.cand_p.append(p)
            self.cand_p_prior.append(p_prior)
            self.cand_cost.append(cost)
            self.cand_eligible.append(eligible)
        self.cand_offsets.append(len(self.cand_model))
        return True

    def _row(self, rec: dict[str, Any]) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
        get = rec.get
        decision = get("decision") or {}
        tokens = get("tokens") or {}
        if type(decision) is not dict or type(tokens) is not dict:
            raise Malformed("decision or tokens is not an object")
        status = _number(get("status"), "status", 0.0)
        outcome = _text(get("outcome"), "outcome")
        fallback_from = get("fallback_from") or []
        raw_cands = decision.get("candidates") or []
        if type(fallback_from) is not list or type(raw_cands) is not list:
            raise Malformed("fallback_from or decision.candidates is not a list")
        cands = []
        for cand in raw_cands:
            if type(cand) is not dict:
                raise Malformed("a decision candidate is not an object")
            model = cand.get("model")
            if type(model) is not str:
                raise Malformed("a decision candidate has no model")
            p = _number(cand.get("p"), "p", NAN)
            cost = _number(cand.get("expected_cost_usd"), "expected_cost_usd", NAN)
            p_prior = _number(cand.get("p_prior"), "p_prior", NAN)
            cands.append((model, p, cost, cand.get("eligible", True) is True, p_prior))
        cost = _number(get("cost_usd"), "cost_usd", 0.0)
        vocab = self.vocab
        row = (
            parse_time(get("time")),
            vocab["route"].code(_text(get("route"), "route")),
            vocab["model"].code(_text(get("model"), "model")),
            vocab["task"].code(_text(get("task"), "task")),
            vocab["reason"].code(_text(decision.get("reason"), "decision.reason")),
            vocab["rule"].code(_text(decision.get("rule"), "decision.rule")),
            int(status),
            int(_number(get("attempts"), "attempts", 1.0)),
            status >= 400 or (outcome is not None and outcome != "ok"),
            get("stream") is True,
            bool(fallback_from),
            cost,
            _number(get("baseline_cost_usd"), "baseline_cost_usd", cost),
            _number(tokens.get("input"), "tokens.input", 0.0),
            _number(tokens.get("output"), "tokens.output", 0.0),
            _number(get("latency_ms"), "latency_ms", NAN),
            _number(get("ttft_ms"), "ttft_ms", NAN),
            _number(decision.get("p"), "decision.p", NAN),
            _number(decision.get("quality_bar"), "decision.quality_bar", NAN),
        )
        return row, cands


def _verdict(rec: dict[str, Any]) -> int | None:
    accepted = rec.get("accepted")
    if isinstance(accepted, bool):
        return ACCEPTED if accepted else REJECTED
    score = rec.get("score")
    if isinstance(score, int | float) and not isinstance(score, bool):
        return ACCEPTED if score >= 0.5 else REJECTED
    return None


def load_records(paths: Iterable[Path], since: float | None = None) -> tuple[Records, LoadStats]:
    """Stream every file once; return compact columns plus counts of what was skipped and why."""
    build = _Builder()
    feedback: dict[str, int] = {}
    judged: dict[str, int] = {}
    counts = dict.fromkeys(("dup", "window", "empty", "score", "override"), 0)
    stream = RecordStream(paths, max_examples=MAX_EXAMPLES)
    for kind, rec in stream:
        if kind == "request":
            rid = rec["id"]
            try:
                if not build.add(rec, since):
                    counts["window"] += 1
                    continue
            except Malformed as exc:
                stream.malformed(str(exc))
                continue
            if rid in build.index:
                counts["dup"] += 1
                build.keep[build.index[rid]] = 0
            build.index[rid] = len(build.keep)
            build.keep.append(1)
        elif kind == "label":
            # the shadow judge's grade of the answer the client got: an outcome where no
            # person sent feedback (feedback, read below, wins)
            score = rec.get("score")
            if rec.get("served") is True and isinstance(score, int | float):
                judged[rec["request_id"]] = ACCEPTED if score >= 0.5 else REJECTED
        else:
            rid = rec["request_id"]
            verdict = _verdict(rec)
            if verdict is None:
                counts["empty"] += 1
                continue
            counts["score"] += not isinstance(rec.get("accepted"), bool)
            counts["override"] += rid in feedback
            feedback[rid] = verdict
    for rid, verdict in judged.items():
        feedback.setdefault(rid, verdict)
    records = _finish(build, feedback)
    orphans = sum(1 for rid in feedback if rid not in build.index)
    files = tuple(
        FileStats(str(f.path), f.lines, f.requests, f.feedback, f.malformed) for f in stream.files
    )
    stats = LoadStats(
        files=files,
        malformed=stream.malformed_lines,
        malformed_examples=tuple(stream.examples),
        other_types=stream.other + stream.explain,
        duplicate_requests=counts["dup"],
        outside_window=counts["window"],
        feedback_records=sum(f.feedback for f in files),
        feedback_orphans=orphans,
        feedback_empty=counts["empty"],
        feedback_by_score=counts["score"],
        feedback_overridden=counts["override"],
    )
    return records, stats


def _finish(build: _Builder, feedback: dict[str, int]) -> Records:
    accepted = np.full(len(build.keep), NO_FEEDBACK, dtype=np.int8)
    for rid, row in build.index.items():
        verdict = feedback.get(rid)
        if verdict is not None:
            accepted[row] = verdict
    keep = np.frombuffer(build.keep, dtype=np.int8).astype(bool)
    offsets = np.frombuffer(build.cand_offsets, dtype=np.int64)
    cand_keep = np.repeat(keep, np.diff(offsets))
    counts = np.diff(offsets)[keep]
    cols: dict[str, Any] = {}
    for (key, typecode), col in zip(COLUMNS, build.cols, strict=True):
        dtype = {"d": np.float64, "i": np.int32, "b": np.int8}[typecode]
        values = np.frombuffer(col, dtype=dtype)[keep]
        cols[key] = values.astype(bool) if typecode == "b" else values
    return Records(
        routes=build.vocab["route"].names(),
        models=build.vocab["model"].names(),
        tasks=build.vocab["task"].names(),
        reasons=build.vocab["reason"].names(),
        rules=build.vocab["rule"].names(),
        accepted=accepted[keep],
        cand_offsets=np.concatenate(([0], np.cumsum(counts))).astype(np.int64),
        cand_model=np.frombuffer(build.cand_model, dtype=np.int32)[cand_keep],
        cand_p=np.frombuffer(build.cand_p, dtype=np.float64)[cand_keep],
        cand_cost=np.frombuffer(build.cand_cost, dtype=np.float64)[cand_keep],
        cand_eligible=np.frombuffer(build.cand_eligible, dtype=np.int8)[cand_keep].astype(bool),
        cand_p_prior=np.frombuffer(build.cand_p_prior, dtype=np.float64)[cand_keep],
        **cols,
    )
