"""The learning-curve benchmark's workflow tags (`--task-tags`, `--tag-field`)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks import learning_curve


def _write(path: Path, rows: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_row_tags_read_task_or_a_meta_key(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    _write(
        data,
        [
            {"id": "s:1", "task": "math", "meta": {"src": "theoremQA-Math"}},
            {"id": "s:2", "task": "law", "meta": {"other": 1}},
            {"id": "s:3", "task": "law"},
            {"id": "s:4", "task": "bio", "meta": {"src": 7}},
        ],
    )
    rows = [SimpleNamespace(id=f"s:{i}", task=t) for i, t in ((3, "law"), (1, "math"), (4, "bio"))]
    assert learning_curve.row_tags(data, rows, "task") == ["law", "math", "bio"]
    # by id, not by position; a row without the key has no tag
    assert learning_curve.row_tags(data, rows, "meta.src") == ["", "theoremQA-Math", "7"]
    rows.append(SimpleNamespace(id="s:2", task="law"))
    assert learning_curve.row_tags(data, rows, "meta.other")[-1] == "1"


@pytest.mark.parametrize("field", ["meta.", "src", "metasrc"])
def test_row_tags_refuse_other_fields(tmp_path: Path, field: str) -> None:
    data = tmp_path / "d.jsonl"
    _write(data, [{"id": "s:1", "task": "math"}])
    with pytest.raises(ValueError, match="tag field"):
        learning_curve.row_tags(data, [SimpleNamespace(id="s:1", task="math")], field)


@pytest.mark.parametrize("field", ["meta.", "source", "prompt"])
def test_cli_refuses_an_unknown_tag_field(
    tmp_path: Path, field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        learning_curve.main(["--data", str(tmp_path / "none.jsonl"), "--tag-field", field])
    assert exc.value.code == 2
    assert "--tag-field must be task or meta.KEY" in capsys.readouterr().err
