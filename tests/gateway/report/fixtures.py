"""Inputs for the `effgate report` tests: a tiny hand-checked log, and an HTML table reader.

`tiny_log()` is small enough that every number the report prints can be worked out by hand;
the expected values sit next to the records in `TINY_EXPECTED`.
"""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import orjson


def request(rid: str, model: str | None, **kw: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "type": "request",
        "id": rid,
        "time": kw.pop("time", "2026-11-01T00:00:00.000Z"),
        "tenant": "default",
        "route": kw.pop("route", "r"),
        "model": model,
        "stream": kw.pop("stream", False),
        "task": kw.pop("task", None),
        "status": kw.pop("status", 200),
        "outcome": kw.pop("outcome", "ok"),
        "error": None,
        "decision": kw.pop("decision", None),
        "attempts": 1,
        "fallback_from": [],
        "tokens": kw.pop("tokens", None),
        "cost_usd": kw.pop("cost", 0.0),
        "baseline_cost_usd": kw.pop("baseline", 0.0),
        "reference_model": "b",
        "latency_ms": kw.pop("latency", None),
        "ttft_ms": kw.pop("ttft", None),
        "upstream_ms": None,
    }
    rec.update(kw)
    return rec


def tokens(tin: int, tout: int) -> dict[str, Any]:
    return {"input": tin, "output": tout, "cached": 0, "reasoning": 0, "estimated": False}


def decision(p: float, bar: float = 0.8) -> dict[str, Any]:
    return {"reason": "cheapest_above_bar", "p": p, "quality_bar": bar, "rule": None,
            "fallbacks": [], "candidates": []}  # fmt: skip


def feedback(rid: str, accepted: bool | None = None, score: float | None = None) -> dict[str, Any]:
    return {"type": "feedback", "request_id": rid, "time": "2026-11-01T03:00:00Z",
            "accepted": accepted, "score": score}  # fmt: skip


def tiny_log() -> bytes:
    """Route r: four requests on s (one a 502), one on b; 6 hours apart at most."""
    hour = "2026-11-01T0{}:00:00Z".format
    recs = [
        request("q1", "s", time=hour(0), cost=0.001, baseline=0.004, latency=100.0, stream=True,
                ttft=10.0, tokens=tokens(10, 20), decision=decision(0.9), prompt="SECRET q1"),
        request("q2", "s", time=hour(1), cost=0.002, baseline=0.008, latency=200.0, stream=True,
                ttft=30.0, tokens=tokens(30, 40), decision=decision(0.7)),
        request("q3", "s", time=hour(2), cost=0.003, baseline=0.012, latency=300.0,
                tokens=tokens(50, 60), decision=decision(0.8)),
        request("q4", "s", time=hour(3), status=502, outcome="upstream_error", latency=400.0,
                decision=decision(0.9)),
        request("q5", "b", time=hour(6), cost=0.010, baseline=0.010, latency=1000.0,
                tokens=tokens(5, 5), decision=decision(0.95)),
        feedback("q1", accepted=True),
        feedback("q2", score=0.3),
        feedback("q3", accepted=False),
        feedback("q3", accepted=True),  # overrides the one before
        feedback("q5", score=0.7),
        feedback("q4"),  # neither accepted nor score: ignored
        feedback("nope", accepted=True),  # no such request
    ]  # fmt: skip
    return b"".join(orjson.dumps(r) + b"\n" for r in recs) + b"{not json\n"


TINY_EXPECTED = {
    "requests": 4,
    "errors": 1,
    "error_rate": 0.25,
    "with_feedback": 3,
    "accepted": 2,
    "acceptance": 2 / 3,
    "spend_usd": 0.006,
    "baseline_usd": 0.024,
    "savings_usd": 0.018,
    "savings_pct": 0.75,
    "cost_per_accepted_usd": 0.003,  # 0.006 spent on the 3 with feedback / 2 accepted
    "tokens_in_per_request": 22.5,  # (10 + 30 + 50 + 0) / 4
    "tokens_out_per_request": 30.0,
    "latency_p50_ms": 250.0,  # [100, 200, 300, 400], linear interpolation
    "latency_p95_ms": 385.0,  # 300 + 0.85 * 100
    "latency_p99_ms": 397.0,
    "ttft_p50_ms": 20.0,  # streams only: [10, 30]
    "ttft_p95_ms": 29.0,
    "mean_predicted_p": 0.8,  # (0.9 + 0.7 + 0.8) / 3 over requests with feedback
    "calibration_gap": 2 / 3 - 0.8,
}


class Tables(HTMLParser):
    """Every <table> as rows of cell texts (entities decoded), the <h2> it follows, <img> srcs."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[str]]] = []
        self.table_heading: list[str] = []
        self.images: list[str] = []
        self.tags: list[str] = []
        self.heading = ""
        self._cell: list[str] | None = None
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "table":
            self.tables.append([])
            self.table_heading.append(self.heading)
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs)["src"] or "")
        elif tag == "h2":
            self._in_h2, self.heading = True, ""

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "h2":
            self._in_h2 = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in_h2:
            self.heading += data

    def table_after(self, heading: str) -> list[list[str]]:
        """The first table under the <h2> with this text."""
        return self.tables[self.table_heading.index(heading)]


def parse_html(text: str) -> Tables:
    parser = Tables()
    parser.feed(text)
    parser.close()
    return parser
