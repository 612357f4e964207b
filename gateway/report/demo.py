"""Synthetic request records with a known ground truth, for `effgate report` demos and tests.

    python -m gateway.report.demo --out demo/records.jsonl [--scenario planted|balanced] [--rotate]
    effgate report --records demo/ --out demo/report

Every number is planted, not sampled: each `Segment` fixes its requests, how many got feedback
and how many of those were accepted, its tokens (so its cost) and its decision. The "planted"
scenario hides one finding of each kind; "balanced" is calibrated and pin-free, so the report
must find nothing. Records also carry what the log really holds: errors, streams, fallbacks,
feedback by score only, a feedback overridden by a later one, malformed lines, prompt text
(which the report must never show) and a hostile task name.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import orjson

Scenario = Literal["planted", "balanced"]
START = datetime(2026, 11, 1, tzinfo=UTC)
PRICES = {"small": (0.15, 0.60), "big": (2.50, 10.00)}  # USD per million tokens, in / out
REFERENCE = "big"
PROMPT_MARKER = "PROMPT-TEXT-MUST-NOT-LEAK"
HOSTILE_TASK = "<script>alert('task')</script>"
MALFORMED = (
    b"this is not json\n",
    b'{"type": "request", "id": "req_cut", "time": \n',
    b"[1, 2, 3]\n",
    b'{"type": "request", "id": "req_badtime", "time": "yesterday", "model": "small"}\n',
    b'{"type": "request", "id": "req_badcost", "time": "2026-11-01T05:00:00Z", '
    b'"model": "small", "status": 200, "cost_usd": "cheap"}\n',
)


def cost(model: str, tokens_in: int, tokens_out: int) -> float:
    price_in, price_out = PRICES[model]
    return (tokens_in * price_in + tokens_out * price_out) / 1e6


@dataclass(frozen=True, slots=True)
class Segment:
    """`n` alike requests spread evenly over `days`; the first `labelled` get feedback and the
    first `accepted` of those are accepted."""

    route: str | None
    task: str | None
    model: str
    n: int
    labelled: int
    accepted: int
    tokens: tuple[int, int]
    p: Mapping[str, float] = field(default_factory=dict)  # candidate -> predicted p
    bar: float | None = None
    reason: str = "cheapest_above_bar"
    rule: str | None = None
    days: tuple[float, float] = (0, 3)
    stream: bool = False
    fallback: bool = False
    status: int = 200

    @property
    def cost_usd(self) -> float:
        return 0.0 if self.status >= 400 else cost(self.model, *self.tokens)

    @property
    def baseline_usd(self) -> float:
        return 0.0 if self.status >= 400 else cost(REFERENCE, *self.tokens)


def segments(scenario: Scenario, summarize_task: str = "summarize") -> list[Segment]:
    """The ground truth. Planted: (a) rule extract-big, (b) rule summarize-strong, (c) route
    support, (d) task code on small in route auto and small in route cheap. Balanced: the same
    traffic, calibrated (acceptance ~ predicted p) and without pins or fallbacks."""
    planted = scenario == "planted"
    easy, hard = {"small": 0.88, "big": 0.96}, {"small": 0.70, "big": 0.90}
    summ, extract_p = {"small": 0.86, "big": 0.93}, {"small": 0.85, "big": 0.95}
    tickets = ({"small": 0.87, "big": 0.9}, {"small": 0.83, "big": 0.9}, {"small": 0.7, "big": 0.9})
    out = [
        Segment("auto", "chat", "small", 150, 90, 80, (400, 200), easy, 0.8, stream=True),
        Segment("auto", "chat", "big", 60, 36, 32, (400, 200), hard, 0.8),
        Segment("auto", "chat", "small", 8, 0, 0, (400, 0), easy, 0.8, status=502),
        Segment("auto", summarize_task, "small", 60, 48, 42, (1500, 150), summ, 0.8, days=(0, 1)),
        Segment("auto", HOSTILE_TASK, "small", 10, 5, 5, (300, 80), easy, 0.8),
        Segment(None, None, "big", 20, 10, 9, (700, 300), reason="explicit_model"),
        Segment("support", "support", "small", 70, 56, 55 if planted else 49, (500, 250),
                tickets[0], 0.85),
        Segment("support", "support", "big", 60, 48, 47 if planted else 43, (500, 250),
                tickets[1], 0.85),
        Segment("support", "support", "big", 40, 32, 31 if planted else 29, (500, 250),
                tickets[2], 0.85),
        Segment("cheap", None, "small", 90, 72, 36 if planted else 56, (300, 100),
                {"small": 0.78, "big": 0.92}, 0.7),
        Segment("auto", "code", "small", 80, 60, 33 if planted else 49, (600, 400),
                {"small": 0.82, "big": 0.95}, 0.8),
        Segment("auto", "code", "big", 50, 40, 36, (600, 400), hard, 0.8),
    ]  # fmt: skip
    later = Segment(
        "auto", summarize_task, "small", 120, 96, 84, (1500, 150), summ, 0.8, days=(1, 3)
    )
    extract = Segment("auto", "extract", "small", 45, 30, 28, (800, 100), extract_p, 0.8)
    if not planted:
        return [*out, later, extract]
    pin = "pinned_by_rule"
    return [
        *out,
        replace(later, model="big", p={"big": 0.93}, rule="summarize-strong"),
        replace(extract, model="big", reason=pin, rule="extract-big"),
        Segment("auto", "chat", "big", 12, 6, 6, (400, 200), easy, 0.8, fallback=True),
    ]


def policy_yaml(scenario: Scenario) -> str:
    """The policy the records were routed by (its rules as of the end of the records)."""
    rules = (
        "    rules:\n"
        "      - {name: summarize-strong, when: {task: [summarize]}, candidates: [big]}\n"
        "      - {name: extract-big, when: {task: [extract]}, model: big}\n"
    )
    return (
        "version: 1\n"
        "models:\n"
        "  - {id: small, provider: openai, base_url: 'http://127.0.0.1:9001/v1',\n"
        "     input_usd_per_mtok: 0.15, output_usd_per_mtok: 0.60, context_window: 128000}\n"
        "  - {id: big, provider: openai, base_url: 'http://127.0.0.1:9002/v1',\n"
        "     input_usd_per_mtok: 2.50, output_usd_per_mtok: 10.00, context_window: 128000}\n"
        "routes:\n"
        "  - name: auto\n"
        "    candidates: [small, big]\n"
        "    quality_bar: 0.8\n"
        "    reference_model: big\n"
        + (rules if scenario == "planted" else "")
        + "  - {name: support, candidates: [small, big], quality_bar: 0.85, reference_model: big}\n"
        "  - {name: cheap, candidates: [small, big], quality_bar: 0.7, reference_model: big}\n"
        "default_route: auto\n"
    )


def _stamp(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _request(seg: Segment, rid: str, when: datetime, j: int) -> dict[str, Any]:
    failed = seg.status >= 400
    tokens_in, tokens_out = seg.tokens
    slow = {"small": (250.0, 0.8, 7.0), "big": (600.0, 2.0, 11.0)}[seg.model]
    latency = slow[0] + slow[1] * tokens_out + slow[2] * (j % 25)
    candidates = [
        {
            "model": m,
            "p": p,
            "expected_cost_usd": cost(m, *seg.tokens),
            "eligible": True,
            "reason": "ok",
        }
        for m, p in seg.p.items()
    ]
    return {
        "type": "request",
        "id": rid,
        "time": _stamp(when),
        "tenant": "default",
        "route": seg.route,
        "model": seg.model,
        "upstream_model": f"mock-{seg.model}",
        "provider": "openai",
        "stream": seg.stream,
        "task": seg.task,
        "status": seg.status,
        "outcome": "upstream_error" if failed else "ok",
        "error": "upstream 502" if failed else None,
        "decision": {
            "reason": seg.reason,
            "difficulty": 0.1,
            "p": seg.p.get(seg.model),
            "quality_bar": seg.bar,
            "rule": seg.rule,
            "fallbacks": [m for m in seg.p if m != seg.model],
            "candidates": candidates,
        },
        "attempts": 2 if seg.fallback else 1,
        "fallback_from": ["small"] if seg.fallback else [],
        "tokens": {
            "input": tokens_in,
            "output": tokens_out,
            "cached": 0,
            "reasoning": 0,
            "estimated": False,
        },
        "cost_usd": seg.cost_usd,
        "baseline_cost_usd": seg.baseline_usd,
        "reference_model": REFERENCE,
        "latency_ms": latency,
        "ttft_ms": 80.0 + 3 * (j % 10) if seg.stream else None,
        "upstream_ms": latency - 5,
        "prompt": f"{PROMPT_MARKER} {rid}: please help with this",
    }


def _feedback(rid: str, when: datetime, accepted: bool, by_score: bool) -> dict[str, Any]:
    stamp = _stamp(when)
    if by_score:
        score = 0.9 if accepted else 0.2
        return {
            "type": "feedback",
            "request_id": rid,
            "time": stamp,
            "accepted": None,
            "score": score,
        }
    return {
        "type": "feedback",
        "request_id": rid,
        "time": stamp,
        "accepted": accepted,
        "score": None,
    }


def records(segs: list[Segment]) -> list[dict[str, Any]]:
    """Request and feedback records of the segments, in log order (by time)."""
    timed: list[tuple[datetime, int, dict[str, Any]]] = []
    seq = 0
    for seg in segs:
        first, last = seg.days
        step = (last - first) * 86400 / seg.n
        for j in range(seg.n):
            when = START + timedelta(seconds=first * 86400 + (j + 0.5) * step)
            rid = f"req_{seq:05d}"
            seq += 1
            timed.append((when, 0, _request(seg, rid, when, j)))
            if j < seg.labelled:
                verdict = j < seg.accepted
                if j % 7 == 3:  # an early, opposite verdict that the later one overrides
                    early = when + timedelta(seconds=30)
                    timed.append((early, 1, _feedback(rid, early, not verdict, False)))
                late = when + timedelta(seconds=60)
                timed.append((late, 1, _feedback(rid, late, verdict, j % 5 == 1)))
    end = START + timedelta(days=3, hours=1)
    timed.append((end, 1, _feedback("req_unknown", end, True, False)))
    empty = {"type": "feedback", "request_id": "req_00000", "time": _stamp(end), "accepted": None}
    timed.append((end, 1, empty))
    timed.sort(key=lambda item: (item[0], item[1]))
    return [rec for _, _, rec in timed]


def write(
    path: Path, scenario: Scenario = "planted", *, rotate: bool = False, task: str = "summarize"
) -> list[Path]:
    """Write the records (plus malformed lines) to `path`; with `rotate`, the older half goes to
    `path.1` as the gateway's log rotation would leave it. Returns the files written."""
    lines = [orjson.dumps(r) + b"\n" for r in records(segments(scenario, task))]
    for i, bad in enumerate(MALFORMED):
        lines.insert((i + 1) * len(lines) // (len(MALFORMED) + 1), bad)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not rotate:
        path.write_bytes(b"".join(lines))
        return [path]
    half = len(lines) // 2
    older = path.with_name(path.name + ".1")
    older.write_bytes(b"".join(lines[:half]))
    path.write_bytes(b"".join(lines[half:]))
    return [older, path]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.report.demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", required=True, type=Path, help="records file to write")
    parser.add_argument("--scenario", choices=("planted", "balanced"), default="planted")
    parser.add_argument("--rotate", action="store_true", help="also write the older half to OUT.1")
    parser.add_argument("--policy", type=Path, help="also write the policy the records came from")
    args = parser.parse_args(argv)
    written = write(args.out, args.scenario, rotate=args.rotate)
    if args.policy is not None:
        args.policy.parent.mkdir(parents=True, exist_ok=True)
        args.policy.write_text(policy_yaml(args.scenario), encoding="utf-8")
        written.append(args.policy)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
