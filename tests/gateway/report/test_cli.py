"""`effgate report` from the command line, and on what a real gateway logs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from gateway.report import demo
from gateway.report.build import build, main
from gateway.report.data import load_records, record_files
from tests.gateway.conftest import chat
from tests.gateway.report.fixtures import tiny_log


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ---------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--records", "{tmp}/missing.jsonl"], "records path not found"),
        (["--records", "{tmp}/empty"], "no *.jsonl files"),
        (["--records", "{tmp}/fb.jsonl"], "no request records"),
        (["--records", "{tiny}", "--format", "pdf"], "--format"),
        (["--records", "{tiny}", "--min-samples", "0"], "--min-samples"),
        (["--records", "{tiny}", "--policy", "{tmp}/nope.yaml"], "cannot read"),
        (["--records", "{tiny}", "--policy", "{tmp}/fb.jsonl"], "fb.jsonl"),
    ],
)
def test_cli_errors_exit_2_with_a_readable_message(
    argv: list[str], message: str, tmp_path: Path, capsys: Any
) -> None:
    tiny_dir = tmp_path / "t"
    tiny_dir.mkdir()
    (tiny_dir / "records.jsonl").write_bytes(tiny_log())
    (tmp_path / "fb.jsonl").write_text(
        '{"type": "feedback", "request_id": "x", "accepted": true}\n'
    )
    (tmp_path / "empty").mkdir()
    args = [a.format(tmp=tmp_path, tiny=tiny_dir) for a in argv]
    rc, out, err = run(capsys, *args, "--out", tmp_path / "out")
    assert rc == 2 and out == ""
    assert err.startswith("effgate report: error:") and message in err


def test_cli_usage_errors_and_help(capsys: Any) -> None:
    assert main([]) == 2
    assert "--records" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "--min-samples" in capsys.readouterr().out


def test_demo_cli_writes_rotated_records_and_a_valid_policy(tmp_path: Path, capsys: Any) -> None:
    from policies.loader import parse_policy

    target = tmp_path / "demo" / "records.jsonl"
    assert demo.main(["--out", str(target), "--rotate", "--policy", str(tmp_path / "p.yaml")]) == 0
    assert sorted(p.name for p in target.parent.iterdir()) == ["records.jsonl", "records.jsonl.1"]
    spec, _ = parse_policy((tmp_path / "p.yaml").read_bytes(), filename="p.yaml")
    assert [r.name for r in spec.routes] == ["auto", "support", "cheap"]
    rec, stats = load_records(record_files(target.parent))
    assert rec.n == sum(s.n for s in demo.segments("planted")) and stats.malformed == 5
    assert math.isclose(
        float(rec.cost.sum()), sum(s.n * s.cost_usd for s in demo.segments("planted"))
    )


# ---------------------------------------------------------------- against the real gateway


@pytest.mark.integration
def test_report_reads_what_the_gateway_logs(
    make_gateway: Any, policy: Any, small: Any, big: Any, tmp_path: Path, capsys: Any
) -> None:
    gw = make_gateway(policy(log_prompts=True), records_max_bytes=3000, records_backups=50)
    ids: list[str] = []
    with gw.http() as c:
        for difficulty, count in ((-2.0, 6), (1.0, 4)):  # small clears 0.8 / only big does
            gw.estimator.value = difficulty
            for i in range(count):
                body = chat(
                    f"private prompt {difficulty} {i}", model="routed", metadata={"task": "qa"}
                )
                ids.append(
                    c.post("/v1/chat/completions", json=body).headers["x-effgate-request-id"]
                )
        c.post("/v1/chat/completions", json=chat("[[fault:status=404]]"))
        c.post("/v1/chat/completions", json=chat(model="nope"))
        gw.records(at_least=12)
        for rid in ids[:3]:
            assert (
                c.post("/v1/feedback", json={"request_id": rid, "accepted": True}).status_code
                == 200
            )
        assert c.post("/v1/feedback", json={"request_id": ids[-1], "score": 0.2}).status_code == 200
    logged = gw.records(at_least=16)
    assert len(list(gw.records_dir.glob("records.jsonl.*"))) >= 1  # rotated
    report = build(gw.records_dir)
    rows = {(r.route, r.model): r for r in report.route_models}
    assert (rows["routed", "small"].requests, rows["routed", "big"].requests) == (6, 4)
    assert (rows["routed", "small"].with_feedback, rows["routed", "small"].accepted) == (3, 3)
    assert (rows["routed", "big"].with_feedback, rows["routed", "big"].accepted) == (1, 0)
    assert rows["auto", "small"].errors == 1 and rows[None, None].errors == 1
    spend = sum(r["cost_usd"] or 0.0 for r in logged if r["type"] == "request")
    assert report.overall.spend_usd == pytest.approx(spend) and spend > 0
    assert report.inputs.malformed == 0 and report.inputs.feedback_records == 4
    assert rows["routed", "big"].mean_predicted_p == pytest.approx(
        next(r["decision"]["p"] for r in logged if r.get("id") == ids[-1])
    )
    out = tmp_path / "out"
    assert run(capsys, "--records", gw.records_dir, "--out", out)[0] == 0
    for name in ("report.html", "report.json"):
        assert "private prompt" not in (out / name).read_text()
