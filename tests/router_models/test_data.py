"""The one parser of the shared labelled-data format: ``router_models.data``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router_models.data import DataError, Result, load_dataset, parse_row, read_rows
from tests.router_models.conftest import ROW, write_dataset


def test_parse_a_row():
    row = parse_row(ROW, "f:1")
    assert (row.id, row.source, row.task, row.prompt_chars) == ("src:1", "src", "math", 12)
    assert row.messages == ({"role": "user", "content": "What is 2+2?"},)
    assert row.results == {"a": Result(1.0, None, 12, 30, 120), "b": Result(0.5)}
    costly = parse_row({**ROW, "models": {"a": {"score": 1, "cost_usd": 0.002}}})
    assert costly.results["a"].cost_usd == 0.002


def test_turns_and_defaults():
    bare = {"prompt": "p", "models": {"a": {"score": 0.5}}, "turns": ["p", "and q"]}
    row = parse_row(bare, "f:7")
    assert (row.id, row.source, row.task) == ("f:7", "", "")
    assert [m["content"] for m in row.messages] == ["p", "and q"] and row.prompt_chars == 6
    assert row.results["a"] == Result(0.5)
    assert parse_row({**ROW, "models": {"a": {"score": 0, "cost_usd": float("nan")}}}).results[
        "a"
    ] == Result(0.0)


@pytest.mark.parametrize(
    ("row", "error"),
    [
        ([], "f:1: expected a JSON object"),
        ({"prompt": 3, "models": {}}, "f:1: needs a string 'prompt' and an object 'models'"),
        ({**ROW, "turns": "x"}, "f:1: 'turns' must be a list of strings"),
        ({**ROW, "models": {"a": 1}}, "f:1: models.a: expected an object"),
        (
            {**ROW, "models": {"a": {"score": 2}}},
            "f:1: models.a.score: expected a number in [0, 1]",
        ),
        ({**ROW, "models": {"a": {"score": True}}}, "f:1: models.a.score: expected a number"),
        (
            {**ROW, "models": {"a": {"score": 1, "input_tokens": -1}}},
            "f:1: models.a.input_tokens: expected a non-negative integer or null, got -1",
        ),
        ({**ROW, "task": 3}, "f:1: 'task' must be a string, got 3"),
        ({**ROW, "source": ["x"]}, "f:1: 'source' must be a string"),
        ({**ROW, "models": {"a": {"score": "1"}}}, "f:1: models.a.score: expected a number"),
        ({**ROW, "models": {"a": {"score": float("nan")}}}, "f:1: models.a.score: expected"),
        (
            {**ROW, "models": {"a": {"score": 1, "cost_usd": "0.1"}}},
            "f:1: models.a.cost_usd: expected a number or null, got '0.1'",
        ),
        (
            {**ROW, "models": {"a": {"score": 1, "output_chars": 1.5}}},
            "f:1: models.a.output_chars: expected a non-negative integer or null",
        ),
    ],
)
def test_malformed_rows(row, error):
    with pytest.raises(DataError) as info:
        parse_row(row, "f:1")
    assert str(info.value).startswith(error)


def test_read_rows_in_order_up_to_a_limit(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps(ROW) + "\n\n" + json.dumps({**ROW, "id": "src:2"}) + "\n")
    b.write_text(json.dumps({**ROW, "id": "src:3"}) + "\n")
    assert [r.id for r in read_rows([a, b])] == ["src:1", "src:2", "src:3"]
    assert [r.id for r in read_rows([a, b], limit=2)] == ["src:1", "src:2"]
    assert [r.id for r in read_rows([a, tmp_path / "never-opened.jsonl"], limit=1)] == ["src:1"]


def test_load_dataset_names_the_bad_row_by_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROW) + "\n" + json.dumps({"id": "x:1"}) + "\n")
    with pytest.raises(DataError) as info:
        load_dataset([path])
    assert str(info.value) == (f"bad row: {path}:2: needs a string 'prompt' and an object 'models'")
    path.write_text("{nope\n")
    with pytest.raises(DataError, match=r"d\.jsonl:1: invalid JSON"):
        load_dataset([path])


def test_load_dataset_reads_rows_and_prices(tmp_path: Path):
    path = write_dataset(tmp_path / "synth.jsonl", n=12)
    data = load_dataset([path])
    assert len(data.rows) == 12 and data.files == (str(path),)
    assert set(data.prices) == {"big", "mid", "small"}
