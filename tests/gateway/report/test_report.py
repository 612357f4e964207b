"""`effgate report`: numbers against hand-computed ones, planted findings, HTML, JSON."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml

from gateway.report import demo
from gateway.report.build import SCHEMA_VERSION, build, main, to_json
from gateway.report.data import RecordsError, load_records, record_files
from gateway.report.findings import FindingSettings, Impact, candidates, repick, union_delta
from gateway.report.html import fmt
from gateway.report.plots import PLOTS
from gateway.report.policy import load_hints, rule_name, scalar
from gateway.report.stats import newcombe, percentiles, wilson
from tests.gateway.report.fixtures import TINY_EXPECTED, parse_html, tiny_log

DAY = 86400.0


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "records.jsonl"
    path.write_bytes(tiny_log())
    return path


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The planted demo, rotated into records.jsonl.1 + records.jsonl in a directory."""
    folder = tmp_path_factory.mktemp("planted")
    demo.write(folder / "records.jsonl", "planted", rotate=True)
    return folder


@pytest.fixture(scope="module")
def planted_report(planted: Path) -> Any:
    return build(planted)


def delta(model_tokens: tuple[int, int]) -> float:
    """What one request costs more on big than on small, at the demo's prices."""
    return demo.cost("big", *model_tokens) - demo.cost("small", *model_tokens)


def demo_span_days() -> float:
    times = [r["time"] for r in demo.records(demo.segments("planted")) if r["type"] == "request"]
    first, last = (np.datetime64(t.rstrip("Z")) for t in (min(times), max(times)))
    return float((last - first) / np.timedelta64(1, "s")) / DAY


# ---------------------------------------------------------------- statistics


def test_wilson_and_newcombe_match_newcombe_1998() -> None:
    # Newcombe (1998) Stat Med 17:857, tables I and II: 81/263, and 56/70 - 48/80.
    low, high = wilson(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    diff, dlow, dhigh = newcombe(48, 80, 56, 70)
    assert (round(diff, 4), round(dlow, 4), round(dhigh, 4)) == (0.2, 0.0524, 0.3339)
    assert all(math.isnan(v) for v in wilson(0, 0))  # no interval without data


def test_percentiles_interpolate_and_skip_missing() -> None:
    values = np.array([400.0, np.nan, 100.0, 300.0, 200.0])
    assert percentiles(values, (50, 95, 99)) == pytest.approx((250.0, 385.0, 397.0))
    assert percentiles(np.array([np.nan]), (50,)) == (None,)


def test_cells_format_money_counts_and_missing_values() -> None:
    assert (fmt(400750, "num"), fmt(0.875, "num"), fmt(1500.0, "num")) == (
        "400,750",
        "0.875",
        "1,500",
    )
    assert (fmt(1234.5, "usd"), fmt(0.000315, "usd"), fmt(-0.5922, "usd")) == (
        "$1,234.50",
        "$0.000315",
        "-$0.592",
    )
    assert fmt(None, "pct") == fmt(float("nan"), "usd") == "–"
    assert fmt(0.6667, "pct") == "66.7%" and fmt(384.99, "ms") == "385"


# ---------------------------------------------------------------- loading and tables


def test_tiny_log_numbers_are_the_hand_computed_ones(tiny: Path) -> None:
    report = build(tiny)
    row = next(r for r in report.route_models if r.model == "s")
    for key, want in TINY_EXPECTED.items():
        assert getattr(row, key) == pytest.approx(want, abs=1e-12), key
    big = next(r for r in report.route_models if r.model == "b")
    assert (big.requests, big.with_feedback, big.accepted) == (1, 1, 1)  # score 0.7 >= 0.5
    assert big.cost_per_accepted_usd == pytest.approx(0.010)
    assert report.overall.spend_usd == pytest.approx(0.016)
    assert report.overall.baseline_usd == pytest.approx(0.034)
    assert report.span.seconds == 6 * 3600
    assert report.span.monthly_factor == pytest.approx(120.0)
    i = report.inputs
    assert (i.malformed, i.feedback_records, i.feedback_orphans, i.feedback_empty) == (1, 7, 1, 1)
    assert (i.feedback_overridden, i.feedback_by_score) == (1, 2)
    assert report.series.bucket == "hour" and len(report.series.starts) == 7
    assert sum(report.series.spend_usd) == pytest.approx(0.016)
    assert report.findings == []  # far too few requests for any finding


def test_last_feedback_wins_in_log_order_across_rotated_files(tmp_path: Path) -> None:
    older = [
        json.dumps({"type": "request", "id": "a", "time": "2026-11-01T00:00:00Z", "model": "m"}),
        json.dumps({"type": "feedback", "request_id": "a", "accepted": False}),
    ]
    (tmp_path / "records.jsonl.2").write_text("\n".join(older) + "\n")
    (tmp_path / "records.jsonl.1").write_text('{"type":"feedback","request_id":"a","score":0.9}\n')
    (tmp_path / "records.jsonl").write_text('{"type":"feedback","request_id":"a","score":0.1}\n')
    (tmp_path / "notes.txt").write_text("not a records file\n")
    files = record_files(tmp_path)
    assert [f.name for f in files] == ["records.jsonl.2", "records.jsonl.1", "records.jsonl"]
    rec, stats = load_records(files)
    assert rec.accepted.tolist() == [0]  # the newest file's score 0.1 counts
    assert stats.feedback_overridden == 2


def test_malformed_lines_are_counted_with_reasons_never_fatal(tmp_path: Path) -> None:
    good = {"type": "request", "id": "ok", "time": "2026-11-01T00:00:00Z", "model": None}
    lines = [
        json.dumps(good),
        "garbage",
        json.dumps({**good, "id": "t", "time": "yesterday"}),
        json.dumps({**good, "id": "c", "cost_usd": "free"}),
        json.dumps({**good, "id": "d", "decision": {"candidates": "all"}}),
        json.dumps(["a", "list"]),
        json.dumps({"type": "request", "time": "2026-11-01T00:00:00Z"}),  # no id
        json.dumps({"type": "heartbeat"}),
        "",
    ]
    path = tmp_path / "x.jsonl"
    path.write_text("\n".join(lines))
    rec, stats = load_records([path])
    assert rec.n == 1 and rec.model.tolist() == [-1]  # a null model is a request, not an error
    assert stats.malformed == 6 and stats.other_types == 1
    reasons = " | ".join(stats.malformed_examples)
    for why in ("invalid JSON", "time is not ISO 8601", "cost_usd is not a number",
                "not a list", "not a JSON object", "id is not a string"):  # fmt: skip
        assert why in reasons
    assert all(r.startswith("x.jsonl:") for r in stats.malformed_examples)


def test_duplicate_request_ids_keep_the_last(tmp_path: Path) -> None:
    base = {"type": "request", "id": "a", "time": "2026-11-01T00:00:00Z", "model": "m"}
    path = tmp_path / "x.jsonl"
    path.write_text(
        json.dumps({**base, "cost_usd": 1.0}) + "\n" + json.dumps({**base, "cost_usd": 2.0})
    )
    rec, stats = load_records([path])
    assert rec.cost.tolist() == [2.0] and stats.duplicate_requests == 1


def test_since_keeps_later_requests_only(tiny: Path) -> None:
    report = build(tiny, since="2026-11-01T02:00:00Z")
    assert report.overall.requests == 3  # q3, q4, q5
    assert report.inputs.outside_window == 2
    with pytest.raises(RecordsError, match="no request records"):
        build(tiny, since="2027-01-01")
    with pytest.raises(RecordsError, match="--since"):
        build(tiny, since="last tuesday")


# ---------------------------------------------------------------- findings machinery


def test_repick_is_the_engines_rule(tmp_path: Path) -> None:
    cand = [
        {"model": "a", "p": 0.95, "expected_cost_usd": 3.0, "eligible": True},
        {"model": "b", "p": 0.85, "expected_cost_usd": 2.0, "eligible": True},
        {"model": "c", "p": 0.99, "expected_cost_usd": 1.0, "eligible": False},
        {"model": "d", "p": 0.60, "expected_cost_usd": 0.5, "eligible": True},
    ]
    rec_line = {"type": "request", "id": "x", "time": "2026-11-01T00:00:00Z", "model": "a",
                "decision": {"candidates": cand}}  # fmt: skip
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(rec_line))
    rec, _ = load_records([path])
    cands = candidates(rec, np.array([0]))
    name = {v: k for k, v in enumerate(rec.models)}
    assert repick(cands, 0.8).tolist() == [name["b"]]  # cheapest eligible with p >= bar
    assert repick(cands, 0.9).tolist() == [name["a"]]  # c is cheaper but not eligible
    assert repick(cands, 0.97).tolist() == [name["a"]]  # none clears: the highest p


def test_union_counts_a_request_once_at_its_largest_change() -> None:
    one = Impact(np.array([1, 2]), np.array([-1.0, -2.0]))
    two = Impact(np.array([2, 3]), np.array([-5.0, -1.0]))
    assert union_delta([one, two]) == -7.0  # 1 + 5 + 1
    assert union_delta([]) == 0.0


def test_snippet_names_are_quoted_unless_plain() -> None:
    assert scalar("summarize") == "summarize"
    assert scalar("yes") == '"yes"' and scalar("a b") == '"a b"'
    assert yaml.safe_load(f"k: {scalar(chr(10) + '# x: [1]')}") == {"k": "\n# x: [1]"}
    schema_name = re.compile(r"^[A-Za-z0-9][\w.:@/+-]*$")  # policies.schema.Name
    for task in ("summarize", "<script>", "__x", "日本語", "a b/c"):
        assert schema_name.match(rule_name(task, "big")), task


# ---------------------------------------------------------------- planted findings


def by_kind(report: Any, kind: str) -> list[Any]:
    return [f for f in report.findings if f.kind == kind]


def test_planted_pin_is_found_with_a_rule_for_the_cheap_model(planted_report: Any) -> None:
    (pin,) = by_kind(planted_report, "overpaid_pin")
    assert (pin.route, pin.task, pin.rule, pin.model) == (
        "auto",
        "summarize",
        "summarize-strong",
        "big",
    )
    e = pin.effect
    assert e.requests_affected == 120
    assert e.cost_delta_usd == pytest.approx(-120 * delta((1500, 150)))
    assert e.monthly_cost_delta_usd == pytest.approx(e.cost_delta_usd * 30 / demo_span_days())
    assert e.acceptance_basis == "observed"
    assert e.acceptance_delta == pytest.approx(42 / 48 - 84 / 96)  # both 0.875
    assert e.acceptance_delta_low < 0 < e.acceptance_delta_high
    rule = yaml.safe_load(pin.policy_change)["routes"][0]
    assert rule["name"] == "auto"
    assert rule["rules"] == [
        {"name": "summarize-small", "when": {"task": ["summarize"]}, "model": "small"}
    ]
    assert "ahead of rule summarize-strong" in pin.policy_change


def test_planted_forced_rule_is_found_with_its_excess(planted_report: Any) -> None:
    (found,) = by_kind(planted_report, "overpaid_decision")
    assert (found.route, found.rule, found.model) == ("auto", "extract-big", "big")
    assert found.effect.cost_delta_usd == pytest.approx(-45 * delta((800, 100)))
    assert found.effect.acceptance_delta == pytest.approx(0.85 - 0.95)  # predicted p change
    assert "model: big" in found.policy_change
    # the 12 fallbacks are below --min-samples: listed as excess spend, not as a finding
    excess = {(e.cause, e.requests): e.excess_usd for e in planted_report.excess}
    assert excess[("fallback", 12)] == pytest.approx(12 * delta((400, 200)))
    assert excess[("rule extract-big", 45)] == pytest.approx(45 * delta((800, 100)))


def test_planted_bar_overpay_lowers_the_support_bar(planted_report: Any) -> None:
    (found,) = by_kind(planted_report, "overpaid_bar")
    assert found.route == "support"
    new_bar = yaml.safe_load(found.policy_change)["routes"][0]["quality_bar"]
    assert 0.70 < new_bar <= 0.83  # moves the p = 0.83 segment to small, not the p = 0.70 one
    assert found.effect.requests_affected == 60
    assert found.effect.cost_delta_usd == pytest.approx(-60 * delta((500, 250)))
    assert found.effect.acceptance_delta == pytest.approx(48 * (0.83 - 0.9) / 136)
    evidence = dict(found.evidence)
    assert evidence["acceptance"] == pytest.approx(133 / 136)
    assert evidence["acceptance 95% low"] + found.effect.acceptance_delta >= 0.85


def test_planted_underpaid_task_and_route(planted_report: Any) -> None:
    task, route = by_kind(planted_report, "underpaid")
    assert (task.route, task.model, task.task) == ("auto", "small", "code")
    assert yaml.safe_load(task.policy_change)["routes"][0]["rules"][0]["model"] == "big"
    assert task.effect.cost_delta_usd == pytest.approx(80 * delta((600, 400)))
    assert task.effect.acceptance_delta == pytest.approx(36 / 40 - 33 / 60)
    assert (route.route, route.model, route.task) == ("cheap", "small", None)
    assert yaml.safe_load(route.policy_change)["routes"][0] == {
        "name": "cheap",
        "quality_bar": 0.79,
    }
    assert route.effect.cost_delta_usd == pytest.approx(90 * delta((300, 100)))
    # calibrated projection: small's p 0.78 corrected by its gap (0.78 - 0.5) -> big's 0.92
    assert route.effect.acceptance_delta == pytest.approx(0.92 - 0.5)


def test_totals_count_each_request_once(planted_report: Any) -> None:
    saved = 120 * delta((1500, 150)) + 60 * delta((500, 250)) + 45 * delta((800, 100))
    assert planted_report.totals.overpaid_usd == pytest.approx(saved)
    added = 80 * delta((600, 400)) + 90 * delta((300, 100))
    assert planted_report.totals.underpaid_usd == pytest.approx(added)


def test_min_samples_gates_findings(planted: Path) -> None:
    lenient = build(planted, settings=FindingSettings(min_samples=10))
    fallback = [f for f in by_kind(lenient, "overpaid_decision") if f.rule is None]
    assert len(fallback) == 1 and "max_retries: 3" in fallback[0].policy_change
    strict = build(planted, settings=FindingSettings(min_samples=500))
    assert strict.findings == []


def test_balanced_control_has_no_finding(tmp_path: Path) -> None:
    demo.write(tmp_path / "records.jsonl", "balanced")
    report = build(tmp_path)
    assert report.findings == [], [f.title for f in report.findings]
    assert report.excess == [] and report.totals.overpaid_usd == 0.0
    assert {r.route for r in report.routes} == {"auto", "support", "cheap", None}


def test_policy_file_hints_quote_the_rule_and_use_its_bars(planted: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(demo.policy_yaml("planted"))
    hints = load_hints(policy)
    assert hints.bars == {"auto": 0.8, "support": 0.85, "cheap": 0.7}
    report = build(planted, hints=hints)
    (found,) = by_kind(report, "overpaid_decision")
    assert "the rule sets nothing else: delete it" in found.policy_change
    assert "{name: extract-big, when: {task: [extract]}, model: big}" in found.policy_change
    assert report.policy == str(policy)


# ---------------------------------------------------------------- outputs


def test_html_json_and_summary_of_the_planted_demo(
    planted: Path, tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / "out"
    rc, stdout, _ = run(capsys, "--records", planted, "--out", out)
    assert rc == 0
    html_text = (out / "report.html").read_text()
    doc = parse_html(html_text)
    assert len(doc.tables) >= 5 + 5  # one evidence table per finding, plus the summary tables
    assert [Path(src).stem for src in doc.images] == list(PLOTS)
    assert all((out / src).is_file() for src in doc.images)
    assert all(not src.startswith(("/", "http")) for src in doc.images)
    assert "script" not in doc.tags and "<script" not in html_text.lower()
    assert "&lt;script&gt;alert(&#x27;task&#x27;)&lt;/script&gt;" in html_text
    data = json.loads((out / "report.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION == 1
    # the HTML table is the JSON, formatted
    table = doc.table_after("Per route and model")
    header, rows = table[0], table[1:]
    assert len(rows) == len(data["route_models"])
    for row, twin in zip(rows, data["route_models"], strict=True):
        cells = dict(zip(header, row, strict=True))
        assert cells["route"] == fmt(twin["route"], "text")
        assert cells["requests"] == fmt(twin["requests"], "int")
        assert cells["spend"] == fmt(twin["spend_usd"], "usd")
        assert cells["cost / accepted"] == fmt(twin["cost_per_accepted_usd"], "usd")
        assert cells["p95 ms"] == fmt(twin["latency_p95_ms"], "ms")
    assert [f["title"] for f in data["findings"]] == [f.title for f in build(planted).findings]
    assert "Where are we overpaying?" in stdout and "saves $5.96 per month" in stdout
    for text in (html_text, (out / "report.json").read_text(), stdout):
        assert demo.PROMPT_MARKER not in text


def test_hostile_task_name_stays_inert_everywhere(tmp_path: Path, capsys: Any) -> None:
    demo.write(tmp_path / "records.jsonl", "planted", task=demo.HOSTILE_TASK + "\n\x1b[2J")
    out = tmp_path / "out"
    rc, stdout, _ = run(capsys, "--records", tmp_path / "records.jsonl", "--out", out)
    assert rc == 0
    html_text = (out / "report.html").read_text()
    assert "<script" not in html_text.lower() and "script" not in parse_html(html_text).tags
    data = json.loads((out / "report.json").read_text())
    (pin,) = [f for f in data["findings"] if f["kind"] == "overpaid_pin"]
    rule = yaml.safe_load(pin["policy_change"])["routes"][0]["rules"][0]
    assert rule["when"] == {"task": [demo.HOSTILE_TASK + "\n\x1b[2J"]}
    assert re.fullmatch(r"[A-Za-z0-9][\w.:@/+-]*", rule["name"])
    assert "\x1b" not in stdout and "saves" in stdout


def test_json_only_writes_no_html_or_plots(tiny: Path, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "out"
    rc, _, _ = run(capsys, "--records", tiny, "--out", out, "--format", "json")
    assert rc == 0 and sorted(p.name for p in out.iterdir()) == ["report.json"]
    data = orjson.loads((out / "report.json").read_bytes())
    assert data == json.loads(json.dumps(to_json(build(tiny))).replace("NaN", "null")) | {
        "generated_at": data["generated_at"]
    }
    assert data["overall"]["requests"] == 5 and data["plots"] == {}


def test_tiny_report_html_shows_the_hand_computed_row(
    tiny: Path, tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / "out"
    assert run(capsys, "--records", tiny, "--out", out)[0] == 0
    doc = parse_html((out / "report.html").read_text())
    header, *rows = doc.table_after("Per route and model")
    row = dict(zip(header, next(r for r in rows if r[1] == "s"), strict=True))
    assert (row["requests"], row["errors"], row["error rate"]) == ("4", "1", "25.0%")
    assert (row["acceptance"], row["95% CI"]) == ("66.7%", "20.8–93.9%")
    assert (row["spend"], row["savings %"], row["cost / accepted"]) == ("$0.006", "75.0%", "$0.003")
    assert (row["p50 ms"], row["p95 ms"], row["TTFT p95"]) == ("250", "385", "29")
    assert "Nothing found with at least 30 requests" in (out / "report.html").read_text()
    assert "SECRET" not in (out / "report.html").read_text()


def test_a_bare_single_request_still_renders_every_plot(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"type": "request", "id": "a", "time": "2026-11-01T00:00:00Z"}))
    out = tmp_path / "out"
    rc, stdout, _ = run(capsys, "--records", path, "--out", out)
    assert rc == 0 and "nothing found" in stdout and "per records' span" in stdout
    doc = parse_html((out / "report.html").read_text())
    assert [Path(src).stem for src in doc.images] == list(PLOTS)
    assert all((out / src).stat().st_size > 0 for src in doc.images)
    data = json.loads((out / "report.json").read_text())
    assert data["span"]["monthly_factor"] is None and data["calibration"] == []
