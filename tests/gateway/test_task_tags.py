"""Workflow tags end to end: requests carry `x-effgate-task` (or `metadata.task`), the
records keep it, `effgate train --records` learns a per-model shift for each tag, and the
gateway routes the same prompt differently by its tag."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from router_models import load_estimator
from router_models.signature import signature
from router_models.train import main as train_main
from tests.gateway.conftest import GatewayFactory, PolicyFactory, chat
from tests.gateway.test_estimator_reload import _artifact

WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "tau", "rho", "kappa", "mu"]
# P(acceptable): small is fine for "chat" and fails at "code"; big is good at both
TRUTH = {"chat": {"small": 0.97, "big": 0.9}, "code": {"small": 0.05, "big": 0.9}}


def _records(path: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    lines: list[dict[str, object]] = []
    for i in range(n):
        task = "code" if i % 2 else "chat"
        prompt = " ".join(rng.choice(WORDS, 8))
        rid = f"req_{i}"
        sig = signature([{"role": "user", "content": prompt}]).to_json()
        lines.append({"type": "request", "id": rid, "model": "small", "status": 200,
                      "task": task, "signature": sig})  # fmt: skip
        for model in ("small", "big"):
            score = float(rng.random() < TRUTH[task][model])
            lines.append({"type": "label", "request_id": rid, "model": model, "score": score})
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return path


def test_a_learned_tag_routes_the_same_prompt_by_its_workflow(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = _artifact(tmp_path / "base", small=0.0, big=2.0)
    out = tmp_path / "adapted"
    recs = _records(tmp_path / "records.jsonl", 400)
    assert train_main(["--records", str(recs), "--base", str(base), "--out", str(out)]) == 0
    assert "calibration stage: 2 workflow tags" in capsys.readouterr().out
    est = load_estimator(out)
    assert est.heads is not None and est.heads.tags == ("chat", "code")
    routes = [{"name": "routed", "candidates": ["small", "big"], "quality_bar": 0.7}]
    gw = make_gateway(policy(routes=routes, default_route="routed"), estimator=est)
    body = chat("alpha beta gamma delta omega sigma tau rho", model="routed")
    with gw.http() as c:
        by_header = {
            task: c.post("/v1/route/explain", json=body, headers={"x-effgate-task": task})
            for task in ("chat", "code")
        }
        by_metadata = c.post("/v1/route/explain", json={**body, "metadata": {"task": "code"}})
        served = c.post("/v1/chat/completions", json=body, headers={"x-effgate-task": "code"})
    assert by_header["chat"].status_code == 200, by_header["chat"].text
    chat_p, code_p = ({r["model"]: r["p"] for r in by_header[t].json()["candidates"]}
                      for t in ("chat", "code"))  # fmt: skip
    assert chat_p["small"] > 0.7 > code_p["small"]
    assert by_header["code"].json()["p_source"] == {"small": "learned", "big": "learned"}
    assert by_header["chat"].json()["model"] == "small"
    assert by_header["code"].json()["model"] == "big"
    assert by_metadata.json()["model"] == "big"
    assert served.status_code == 200 and served.json()["model"] == "big"
    # the record keeps the signature the learned heads scored, digest added: the same as one
    # made from scratch
    (rec,) = [r for r in gw.records(at_least=4) if r.get("endpoint") == "chat"]
    assert rec["signature"] == signature(body["messages"]).to_json()
