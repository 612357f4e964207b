"""The shared dataset reader used by replays."""

from __future__ import annotations

import json

import pytest

from policies.replay_data import (
    DatasetError,
    Label,
    data_models,
    estimate_tokens,
    parse_prompt,
    read_prompts,
)
from router_models.data import DataError
from tests.router_models.conftest import ROW


def test_parse_a_row():
    p = parse_prompt(ROW, "f:1")
    assert p.id == "src:1" and p.task == "math" and p.turns == ("What is 2+2?",)
    assert p.labels["a"] == Label(1.0, 12, 30, 120)
    assert p.labels["b"] == Label(0.5, None, None, None)
    assert p.messages == [{"role": "user", "content": "What is 2+2?"}]
    assert p.chars == 12


def test_turns_become_messages():
    p = parse_prompt({**ROW, "turns": ["What is 2+2?", "and 3+3?"], "task": None}, "f:1")
    assert [m["content"] for m in p.messages] == ["What is 2+2?", "and 3+3?"]
    assert p.chars == 20 and p.task is None


def test_estimate_tokens():
    assert [estimate_tokens(n) for n in (0, 1, 4, 5)] == [0, 1, 1, 2]


def test_a_malformed_row_is_a_dataset_error_naming_where():
    # the parser is router_models.data's; its malformed rows: tests/router_models/test_data.py
    assert DatasetError is DataError
    with pytest.raises(DatasetError) as info:
        parse_prompt({**ROW, "models": {"a": {"score": 2}}}, "f:1")
    assert str(info.value).startswith("f:1: models.a.score: expected a number in [0, 1]")


def test_read_files_skip_blank_lines_and_stop_at_limit(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps(ROW) + "\n\n" + json.dumps({**ROW, "id": "src:2"}) + "\n")
    b.write_text(json.dumps({**ROW, "id": "src:3", "models": {"c": {"score": 0}}}) + "\n")
    prompts = read_prompts([a, b])
    assert [p.id for p in prompts] == ["src:1", "src:2", "src:3"]
    assert data_models(prompts) == {"a", "b", "c"}
    assert [p.id for p in read_prompts([a, b], limit=2)] == ["src:1", "src:2"]


def test_invalid_json_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROW) + "\n{nope\n")
    with pytest.raises(DatasetError) as info:
        read_prompts([path])
    assert str(info.value).startswith(f"{path}:2: invalid JSON")
