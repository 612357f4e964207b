"""The one reader of the gateway's request log (router_models.records) and train's labels."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from router_models.data import DataError
from router_models.records import RecordsError, RecordStream, load_examples, record_files
from router_models.signature import signature
from tests.router_models.records_log import accept_then_reject, feedback, request, write


def _digest(rid: str) -> str:
    return signature([{"role": "user", "content": f"Q {rid}?"}]).digest


def test_files_oldest_first_numerically_per_base(tmp_path: Path) -> None:
    rotated = ("records.jsonl", "records.jsonl.1", "records.jsonl.2", "records.jsonl.10")
    others = ("b.jsonl", "b.jsonl.1", "notes.txt", "records.jsonl.gz", "records.jsonl.1.bak")
    for name in rotated + others:
        (tmp_path / name).write_text("")
    (tmp_path / "sub.jsonl").mkdir()
    names = [p.name for p in record_files(tmp_path)]
    # two bases (two replicas' logs), each oldest first; only *.jsonl and *.jsonl.N
    assert names == ["b.jsonl.1", "b.jsonl", *reversed(rotated[1:]), "records.jsonl"]
    assert record_files(tmp_path / "records.jsonl.2") == [tmp_path / "records.jsonl.2"]


def test_missing_or_empty_paths_are_errors(tmp_path: Path) -> None:
    with pytest.raises(RecordsError, match="records path not found"):
        record_files(tmp_path / "nope")
    with pytest.raises(RecordsError, match=r"no \*\.jsonl files in"):
        record_files(tmp_path)
    assert issubclass(RecordsError, DataError)  # effgate train reports it like any data error


def test_the_last_verdict_in_log_order_wins(tmp_path: Path) -> None:
    examples, summary = load_examples(accept_then_reject(tmp_path / "logs"))
    label = {e.group: e.labels["m"] for e in examples}
    assert label == {_digest("a"): 0.0}  # the newer file's reject, not the older accept
    assert (summary.requests, summary.labelled, summary.skipped_no_label) == (2, 1, 1)


def test_rotation_order_is_numeric_not_lexical(tmp_path: Path) -> None:
    # oldest first is .10, .2, .1, then the live file; read lexically (.1, .10, .2) the
    # score in .2 would win over the newer reject in .1
    write(tmp_path / "records.jsonl.10", request("a"), feedback("a", accepted=True))
    write(tmp_path / "records.jsonl.2", feedback("a", score=0.25))
    write(tmp_path / "records.jsonl.1", feedback("a", accepted=False))
    write(tmp_path / "records.jsonl", feedback("a"))  # neither accepted nor score: no change
    examples, _ = load_examples(tmp_path)
    assert [e.labels["m"] for e in examples] == [0.0]


def test_explain_ignored_embeddings_skipped(tmp_path: Path) -> None:
    path = write(
        tmp_path / "records.jsonl",
        request("x", endpoint="explain"),
        feedback("x", accepted=True),
        request("e", endpoint="embeddings"),
        feedback("e", accepted=True),
        request("c", endpoint="chat"),
        feedback("c", score=0.5),
        request("old"),  # no endpoint: an older log's chat request
        feedback("old", accepted=True),
    )
    examples, summary = load_examples(path)
    assert sorted(e.group for e in examples) == sorted([_digest("c"), _digest("old")])
    assert (summary.requests, summary.labelled) == (3, 2)
    assert (summary.ignored_explain, summary.skipped_not_chat) == (1, 1)


def test_stream_counts_what_it_cannot_use(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    lines = [b'{"type": "request", "id": "r"}', b"garbage", b"[1]", b"", b'{"type": "beat"}',
             b'{"type": "request", "id": 3}', b'{"type": "feedback", "request_id": null}',
             b'{"type": "feedback", "request_id": "r"}',
             b'{"type": "request", "id": "x", "endpoint": "explain"}']  # fmt: skip
    path.write_bytes(b"\n".join(lines) + b"\n")
    stream = RecordStream([path], max_examples=3)
    kinds = []
    for kind, _ in stream:
        kinds.append(kind)
        if kind == "feedback":
            stream.malformed("the reader's own check")
    assert kinds == ["request", "feedback"]
    (file,) = stream.files
    assert (file.lines, file.requests, file.feedback, file.malformed) == (9, 1, 0, 5)
    assert (stream.malformed_lines, stream.other, stream.explain) == (5, 1, 1)
    assert stream.examples == [
        "x.jsonl:2: invalid JSON",
        "x.jsonl:3: not a JSON object",
        "x.jsonl:6: id is not a string",
    ]


def test_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "records.jsonl").mkdir()
    with pytest.raises(RecordsError, match="cannot read"):
        list(RecordStream([tmp_path / "records.jsonl"]))


def test_signatures_and_judge_labels_make_examples_without_prompts(tmp_path: Path) -> None:
    sig = signature([{"role": "user", "content": "Q s?"}]).to_json()
    path = write(
        tmp_path / "records.jsonl",
        request("s", prompt=None, signature=sig),
        {"type": "label", "request_id": "s", "model": "m", "score": 0.2, "source": "judge"},
        {"type": "label", "request_id": "s", "model": "big", "score": 0.9, "source": "judge"},
        feedback("s", accepted=True),  # a person's verdict wins over the judge's for "m"
        request("nosig", prompt=None),
        feedback("nosig", accepted=True),
        request("bad", prompt=None, signature={"v": 1, "ids": "%%%"}),
        feedback("bad", accepted=True),
        {"type": "label", "request_id": "s", "model": "big", "score": 7},  # out of range
        {"type": "label", "request_id": 5, "model": "big", "score": 1},  # malformed line
    )
    examples, summary = load_examples(path)
    (e,) = examples
    assert e.labels == {"m": 1.0, "big": 0.9} and e.group == _digest("s")
    assert (summary.labels_feedback, summary.labels_judge) == (1, 2)
    assert summary.skipped_no_signature == 1
    assert summary.bad_lines == 2  # the bad signature and the malformed label


def test_version_1_signatures_with_a_system_prompt_are_used_and_counted(tmp_path: Path) -> None:
    """Records written before feature version 6 keep their labels; those whose request had a
    system prompt (their dense part read it as text) are counted for `effgate train` to say."""
    system = [{"role": "system", "content": "House rules. " * 40}]
    with_system = signature([*system, {"role": "user", "content": "Q a?"}]).to_json()
    bare = signature([{"role": "user", "content": "Q b?"}]).to_json()
    records = []
    for rid, sig, v in (("a", with_system, 1), ("b", bare, 1), ("c", dict(with_system), 2)):
        records += [request(rid, prompt=None, signature={**sig, "v": v}), feedback(rid, True)]
    examples, summary = load_examples(write(tmp_path / "records.jsonl", *records))
    assert len(examples) == 3 and summary.labelled == 3
    assert summary.older_system_dense == 1  # a: version 1 and a system prompt
    assert summary.bad_lines == 0


def test_a_repeated_request_id_keeps_its_last_record(tmp_path: Path) -> None:
    # a client that reuses x-request-id: the gateway's feedback joins its latest request,
    # and `effgate report` keeps the last record; training does the same
    later = signature([{"role": "user", "content": "Q again?"}]).digest
    path = write(
        tmp_path / "records.jsonl",
        request("a"),
        request("a", prompt="Q again?", model="n"),
        feedback("a", accepted=True),  # for "n", which served the last request "a"
        request("b"),
        request("b", endpoint="embeddings"),  # the last "b" has no prompt to learn from
        feedback("b", accepted=True),
    )
    examples, summary = load_examples(path)
    assert [(e.group, dict(e.labels)) for e in examples] == [(later, {"n": 1.0})]
    assert (summary.requests, summary.labelled, summary.labels_feedback) == (2, 1, 1)
    assert (summary.skipped_not_chat, summary.skipped_no_label) == (1, 0)


def test_max_examples_keeps_the_newest_by_their_last_record(tmp_path: Path) -> None:
    # a, b, c, d labelled in that order; then "b" is requested again (its record moves to
    # the newest) and "e" arrives: the newest three by last record are d, b and e
    records = []
    for rid in "abcd":
        records += [request(rid), feedback(rid, accepted=True)]
    records += [request("b", prompt="Q b again?"), request("e"), feedback("e", accepted=False)]
    path = write(tmp_path / "records.jsonl", *records)
    examples, summary = load_examples(path, max_examples=3)
    again = signature([{"role": "user", "content": "Q b again?"}]).digest
    assert [e.group for e in examples] == [_digest("d"), again, _digest("e")]
    assert (summary.labelled, summary.beyond_cap, summary.labels_feedback) == (5, 2, 5)
    every, whole = load_examples(path)
    assert [e.group for e in every] == [_digest("a"), _digest("c"), *(e.group for e in examples)]
    assert (whole.labelled, whole.beyond_cap) == (5, 0)


def test_max_examples_counts_only_what_can_be_an_example(tmp_path: Path) -> None:
    # "c"'s last record is an embeddings call: it makes no example, so the two newest
    # examples are a and b, not b alone
    records = []
    for rid in "abc":
        records += [request(rid), feedback(rid, accepted=True)]
    records += [request("c", endpoint="embeddings"), request("d", prompt=None)]
    records += [feedback("d", accepted=True)]  # no signature nor prompt: no example either
    path = write(tmp_path / "records.jsonl", *records)
    examples, summary = load_examples(path, max_examples=2)
    assert [e.group for e in examples] == [_digest("a"), _digest("b")]
    assert summary.beyond_cap == 0 and summary.skipped_not_chat == 1
    assert [e.group for e in load_examples(path)[0]] == [_digest("a"), _digest("b")]


def test_max_examples_takes_the_newest_by_time_across_files(tmp_path: Path) -> None:
    # two replicas' logs read by name: a's holds January, b's December; January is newer
    folder = tmp_path / "records"
    folder.mkdir()
    jan = [request(f"j{i}", time=f"2027-01-0{i + 1}T00:00:00Z") for i in range(3)]
    dec = [request(f"d{i}", time=f"2026-12-0{i + 1}T00:00:00Z") for i in range(3)]
    write(folder / "replica-a.jsonl", *jan, *(feedback(f"j{i}", True) for i in range(3)))
    write(folder / "replica-b.jsonl", *dec, *(feedback(f"d{i}", True) for i in range(3)))
    examples, summary = load_examples(folder, max_examples=4)
    assert {e.group for e in examples} == {_digest(r) for r in ("d2", "j0", "j1", "j2")}
    assert summary.beyond_cap == 2


def test_max_examples_is_the_newest_of_the_uncapped_examples(tmp_path: Path) -> None:
    """Random logs (repeated ids, embeddings, unsigned requests, labels before and after,
    times out of log order): the capped examples are always the uncapped ones whose last
    record is newest, by (time, place in the log)."""
    rng = random.Random(0)
    for trial in range(150):
        prompts = {r: f"Q {r} {trial}?" for r in "abcdef"}
        rid_of = {signature([{"role": "user", "content": q}]).digest: r for r, q in prompts.items()}
        records: list[dict[str, object]] = []
        for _ in range(rng.randint(1, 14)):
            rid = rng.choice("abcdef")
            if rng.random() < 0.5:
                kw: dict[str, object] = {"time": f"2026-12-0{rng.randint(1, 3)}T00:00:00Z"}
                kw["prompt"] = None if rng.random() < 0.15 else prompts[rid]
                if rng.random() < 0.15:
                    kw["endpoint"] = "embeddings"
                records.append(request(rid, **kw))
            else:
                records.append(feedback(rid, accepted=rng.random() < 0.5))
        path = write(tmp_path / f"{trial}.jsonl", *records)
        every, _ = load_examples(path)
        last_at = {}  # id -> (time, place) of its last request record
        for at, rec in enumerate(records):
            if rec["type"] == "request":
                last_at[rec["id"]] = (rec["time"], at)
        ranked = [e.group for e in sorted(every, key=lambda e: last_at[rid_of[e.group]])]
        labels = {e.group: e.labels for e in every}
        for cap in range(len(every) + 2):
            capped, summary = load_examples(path, max_examples=cap)
            want = ranked[len(ranked) - cap :] if cap else []
            assert sorted(e.group for e in capped) == sorted(want), (trial, cap)
            assert summary.beyond_cap == len(every) - len(capped)
            assert all(labels[e.group] == e.labels for e in capped)
