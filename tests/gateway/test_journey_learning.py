"""Journey 5 as an operator runs it, every part real: shadow evaluation on, labels land in
the records, ``effgate train --records`` prints its held-out comparison and writes an
artifact, and the running ``effgate serve`` routes by it without a restart.

The route serves ``small`` where the policy's skills say it clears the bar. In truth it
fails one workflow ("implement ..." prompts) and handles the other ("summarize ...");
``big`` handles both. The judge (a fake upstream with scripted grades) knows this from the
answers' text: the fakes answer ``"<model> says: "`` and the prompt's words.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from router_models.artifact import default_artifact_dir
from tests.fakes.servers import FakeUpstreamHandle, serve_fake_upstream
from tests.gateway.conftest import TIMEOUTS, policy_dict, wait_until
from tests.gateway.serving import ROOT, serve_process

WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "tau", "rho", "kappa", "mu"]
CODE, PROSE = "implement a python function that", "summarize this note about"
# first rule an answer contains wins: small fails the code workflow, everything else passes
RULES = ((f"mock-small says: {CODE}", 0.0), ("mock-small says:", 1.0), ("mock-big says:", 1.0))
N = 80  # requests of each workflow


@pytest.fixture
def judge() -> Iterator[FakeUpstreamHandle]:
    with serve_fake_upstream(models=("mock-judge",), judge=RULES) as fake:
        yield fake


def _policy(small: FakeUpstreamHandle, big: FakeUpstreamHandle, judge_url: str) -> dict[str, Any]:
    # skills: P(small) is 0.9 or more on both workflows' prompts under the shipped prior
    data = policy_dict(
        small.base_url,
        big.base_url,
        small={"skill": 1.8},
        big={"skill": 3.0},
        routes=[
            {
                "name": "routed",
                "candidates": ["small", "big"],
                "quality_bar": 0.8,
                "shadow": {
                    "sample": 1.0,
                    "judge": "judge",
                    "models": ["big"],
                    "daily_usd": 5.0,
                    "max_pending": 1000,
                },
            }
        ],  # fmt: skip
        default_route="routed",
    )
    data["models"].append(
        {"id": "judge", "provider": "openai", "base_url": judge_url, "upstream_model": "mock-judge",
         "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 4.0, "context_window": 128000,
         "timeouts": dict(TIMEOUTS), "max_retries": 0}
    )  # fmt: skip
    return data


def _prompt(lead: str, rng: random.Random) -> str:
    return f"{lead} {' '.join(rng.choice(WORDS) for _ in range(8))}"


def _served(client: openai.OpenAI, prompt: str) -> str:
    raw = client.chat.completions.with_raw_response.create(
        model="routed", messages=[{"role": "user", "content": prompt}]
    )
    raw.parse()
    return raw.headers["x-effgate-model"]


def _explain(origin: str, prompt: str) -> dict[str, Any]:
    body = {"model": "routed", "messages": [{"role": "user", "content": prompt}]}
    r = httpx.post(origin + "/v1/route/explain", json=body, timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_shadow_labels_train_a_router_the_running_gateway_serves(
    tmp_path: Path, small: FakeUpstreamHandle, big: FakeUpstreamHandle, judge: FakeUpstreamHandle
) -> None:
    live = tmp_path / "artifact"
    shutil.copytree(default_artifact_dir(), live)
    policy = _policy(small, big, judge.base_url)
    rng = random.Random(0)
    with serve_process(
        tmp_path,
        small,
        big,
        policy=policy,
        EFFGATE_ESTIMATOR_PATH=str(live),
        EFFGATE_POLICY_POLL_S="0.1",
    ) as gw:
        client = openai.OpenAI(base_url=gw.origin + "/v1", api_key="unused", max_retries=0)
        # 1. the prior serves small on both workflows; every request is also shadowed
        for i in range(2 * N):
            assert _served(client, _prompt(CODE if i % 2 else PROSE, rng)) == "small"

        def labels() -> list[dict[str, Any]]:
            return [r for r in gw.records() if r["type"] == "label"]

        wait_until(lambda: len(labels()) >= 4 * N, 60, f"{4 * N} judge labels")
        got = labels()
        assert {(r["model"], r["served"]) for r in got} == {("small", True), ("big", False)}
        assert sum(r["score"] for r in got if r["model"] == "small") == N  # the prose half

        # 2. the operator trains on the records, with the policy the gateway serves
        (tmp_path / "served.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
        out = tmp_path / "adapted"
        cmd = [sys.executable, "-m", "gateway.cli", "train", "--records", str(gw.records_dir)]
        cmd += ["--policy", str(tmp_path / "served.yaml"), "--out", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        report = done.stdout + done.stderr
        assert f"{2 * N} labelled requests (0 feedback, {4 * N} judge labels)" in report, report
        assert f"held-out comparison: {2 * N} examples" in report, report
        assert "verdict: better" in report, report
        comparison = json.loads((out / "metadata.json").read_text())["adapted"]["comparison"]
        (pair,) = comparison["pairs"]
        assert (pair["strong"], pair["weak"]) == ("big", "small")
        assert pair["new"] > max(pair["base"], pair["length"], pair["random"]), pair
        assert comparison["mean_brier"]["new"] < comparison["mean_brier"]["base"]

        # 3. the new artifact goes into the watched directory; the gateway takes it live
        before = _explain(gw.origin, _prompt(CODE, rng))
        assert before["p_source"] == {"small": "prior", "big": "prior"}
        shutil.copytree(out, live, dirs_exist_ok=True)  # docs/operations.md: copy it over

        def learned() -> bool:
            return bool(_explain(gw.origin, _prompt(PROSE, rng))["p_source"]["small"] == "learned")

        wait_until(learned, 30, "the trained artifact live")
        # 4. fresh prompts of each workflow: the code one now goes to big, the prose one stays
        code, prose = (
            _explain(gw.origin, _prompt(CODE, rng)),
            _explain(gw.origin, _prompt(PROSE, rng)),
        )
        p_code = {c["model"]: c["p"] for c in code["candidates"]}
        p_prose = {c["model"]: c["p"] for c in prose["candidates"]}
        assert p_code["small"] < 0.8 <= p_prose["small"], (p_code, p_prose)
        assert _served(client, _prompt(CODE, rng)) == "big"
        assert _served(client, _prompt(PROSE, rng)) == "small"
        assert gw.proc.poll() is None  # the same process throughout
