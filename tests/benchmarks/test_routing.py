"""benchmarks/routing.py runs the real estimator and decide() and reports what it measured."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest

from benchmarks import routing
from policies.loader import load_policy
from router_models import load_estimator


def test_reports_every_stage_for_each_request(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli.serve import GC_THRESHOLDS

    before = gc.get_threshold()
    assert routing.main(["--n", "60", "--route", "auto"]) == 0
    out = json.loads(capsys.readouterr().out)
    # timed with the collector as effgate serve sets it, and this process's setting back
    assert out["gc_thresholds"] == list(GC_THRESHOLDS)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    assert out["requests"] == 60
    for table in (out["wall_ms"], out["cpu_ms"]):
        assert set(table) == {"estimator", "decide", "total"}
        for stage in table.values():
            assert 0 < stage["p50"] <= stage["p90"] <= stage["p99"] <= stage["max"]
    buckets = out["total_by_prompt_chars"]
    assert set(buckets) == {"wall", "cpu"}
    assert sum(b["n"] for b in buckets["wall"].values()) == 60
    assert set(buckets["wall"]) <= {"short", "typical", "long"}
    typical = buckets["wall"]["typical"]  # the shared prompts: about half are typical
    assert 0 < typical["n"] < 60
    assert out["typical_total_p99_within_budget"] == (typical["p99"] <= 0.5)
    est = load_estimator()
    policy = load_policy(
        "policies/default.yaml", skills=est.skills, discrimination=est.discrimination
    )
    allowed = {m.id for m in policy.routes["auto"].entries}
    assert sum(out["chosen"].values()) == 60 and set(out["chosen"]) <= allowed


def test_unknown_route_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert routing.main(["--n", "5", "--route", "nope"]) == 2
    assert "no route 'nope'" in capsys.readouterr().err


def test_requests_carry_their_tasks_system_prompt(tmp_path: Path) -> None:
    from benchmarks.estimator import SYSTEM, chat_requests

    data = tmp_path / "rows.jsonl"
    rows = [{"prompt": f"question {i}", "task": ("math", "law", "bio")[i % 3]} for i in range(30)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    task_of = {r["prompt"]: r["task"] for r in rows}
    plain = chat_requests([data], 200, 0)
    assert all(m[0] == SYSTEM for m in plain)
    prompts = {"math": "You do sums.", "*": "About {task}."}
    sent = chat_requests([data], 200, 0, prompts)
    # the same prompts in the same order, each with its task's system prompt
    assert [m[1] for m in sent] == [m[1] for m in plain]
    want = {"math": "You do sums.", "law": "About law.", "bio": "About bio."}
    assert all(m[0]["content"] == want[task_of[m[1]["content"]]] for m in sent)
    assert {task_of[m[1]["content"]] for m in sent} == {"math", "law", "bio"}
    only_math = chat_requests([data], 200, 0, {"math": "You do sums."})
    sums = {"role": "system", "content": "You do sums."}
    assert all(m[0] == (sums if task_of[m[1]["content"]] == "math" else SYSTEM) for m in only_math)


def test_requests_without_system_prompts_are_the_ones_it_always_made() -> None:
    """The generated requests (no data file) of seed 0 are pinned: runs before and after the
    --system-prompts option time the same requests."""
    import hashlib

    from benchmarks.estimator import chat_requests

    made = chat_requests([], 20, 0)
    assert hashlib.sha256(json.dumps(made).encode()).hexdigest()[:16] == "72ce9852920a29fc"


def test_system_prompts_reach_the_benchmark_and_a_bad_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "rows.jsonl"
    rows = [{"prompt": f"question number {i} " * 40, "task": "math"} for i in range(10)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    prompts = tmp_path / "system.json"
    prompts.write_text(json.dumps({"math": "You do sums. " * 200}))
    base = ["--n", "20", "--route", "auto", "--data", str(data)]
    assert routing.main(base) == 0
    plain = json.loads(capsys.readouterr().out)
    assert routing.main([*base, "--system-prompts", str(prompts)]) == 0
    with_system = json.loads(capsys.readouterr().out)
    assert plain["requests"] == with_system["requests"] == 20
    assert plain["system_prompt_chars"] == len("You are a helpful assistant.")
    assert with_system["system_prompt_chars"] == len("You do sums. " * 200)
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    for path in (bad, tmp_path / "missing.json"):
        with pytest.raises(SystemExit) as exc:
            routing.main([*base, "--system-prompts", str(path)])
        assert exc.value.code == 2
    assert "system prompt" in capsys.readouterr().err
