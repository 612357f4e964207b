"""`effgate report` and `effgate train --records` read one log the same way."""

from __future__ import annotations

from pathlib import Path

from gateway.report.data import NO_FEEDBACK, REJECTED, load_records, record_files
from router_models import records as train_records
from tests.router_models.records_log import accept_then_reject, feedback, request, write


def test_report_and_train_keep_the_same_last_verdict(tmp_path: Path) -> None:
    logs = accept_then_reject(tmp_path / "logs")
    examples, _ = train_records.load_examples(logs)
    assert [e.labels["m"] for e in examples] == [0.0]
    rec, stats = load_records(record_files(logs))
    assert rec.accepted.tolist() == [REJECTED, NO_FEEDBACK]  # a (older file), then b
    assert stats.feedback_overridden == 1
    assert [Path(f.path).name for f in stats.files] == ["records.jsonl.1", "records.jsonl"]


def test_report_skips_explain_and_counts_embeddings_spend(tmp_path: Path) -> None:
    path = write(
        tmp_path / "records.jsonl",
        request("x", endpoint="explain", cost_usd=9.0),
        request("e", endpoint="embeddings", cost_usd=0.5, prompt=None),
        request("c", endpoint="chat", cost_usd=0.25),
        feedback("x", accepted=True),
    )
    rec, stats = load_records(record_files(path))
    assert rec.n == 2 and float(rec.cost.sum()) == 0.75
    assert stats.other_types == 1  # the explain request
    assert stats.files[0].requests == 2
    assert stats.feedback_orphans == 1  # feedback on an explain id joins nothing
