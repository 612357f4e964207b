"""`effgate report`: reliability per model, and where the learned router departs from the prior."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.report.build import build, to_json
from gateway.report.html import render
from tests.router_models.records_log import feedback, request, write


def _req(rid: str, served: str, p: dict[str, float], prior: dict[str, float]) -> dict[str, Any]:
    cands = [
        {"model": m, "p": p[m], "p_prior": prior[m], "expected_cost_usd": cost,
         "eligible": True, "reason": "ok"}
        for m, cost in (("small", 0.001), ("big", 0.01))
    ]  # fmt: skip
    decision = {"reason": "cheapest_above_bar", "difficulty": 0.0, "p": p[served],
                "quality_bar": 0.8, "rule": None, "fallbacks": [], "candidates": cands}  # fmt: skip
    return request(rid, model=served, route="auto", decision=decision, prompt=None)


def _log(tmp_path: Path) -> Path:
    lines: list[dict[str, Any]] = []
    for i in range(40):
        # learned: small clears the bar on half the requests where the prior says big
        differ = i % 2 == 0
        p = {"small": 0.9 if differ else 0.5, "big": 0.95}
        prior = {"small": 0.5, "big": 0.95}
        served = "small" if differ else "big"
        lines.append(_req(f"r{i}", served, p, prior))
        if differ:
            # the judge's grade of the served answer is the outcome where no one sent feedback
            ok = i % 4 == 0
            score = 1.0 if ok else 0.0
            lines.append({"type": "label", "request_id": f"r{i}", "model": "small",
                          "score": score, "source": "judge", "served": True})  # fmt: skip
        else:
            lines.append(feedback(f"r{i}", accepted=True))
    # feedback wins over the judge for the same request
    lines.append({"type": "label", "request_id": "r1", "model": "big", "score": 0.0,
                  "served": True})  # fmt: skip
    return write(tmp_path / "records.jsonl", *lines)


def test_reliability_and_disagreement(tmp_path: Path) -> None:
    report = build(_log(tmp_path))
    rel = {r.model: r for r in report.reliability}
    assert rel["small"].requests == 20 and rel["big"].requests == 20
    # small was served at P 0.9 and accepted half the time: Brier 0.41; the prior said 0.5
    assert rel["small"].brier == pytest.approx(0.41)
    assert rel["small"].brier_prior == pytest.approx(0.25)
    assert rel["big"].brier == pytest.approx(0.05**2)  # accepted every time (feedback won)
    (d,) = report.disagreement
    assert (d.route, d.decisions, d.differ, d.learned_cheaper, d.learned_dearer) == (
        "auto", 40, 20, 20, 0,
    )  # fmt: skip
    assert d.acceptance_when_differ == pytest.approx(0.5) and d.outcomes_when_differ == 20
    assert d.mean_abs_p_gap == pytest.approx(0.2)
    doc = to_json(report)
    assert doc["reliability"][0]["bins"] and doc["disagreement"][0]["differ"] == 20
    html = render(report)
    assert "learned router against the prior" in html and "learned differs" in html
