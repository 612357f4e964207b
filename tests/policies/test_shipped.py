"""Every shipped policy loads with the shipped estimator, without API keys, and routes."""

from __future__ import annotations

from pathlib import Path

import pytest

from policies.check import estimator_skills
from policies.engine import NoLiveStats, RouteInput, decide
from policies.loader import load_policy

ROOT = Path(__file__).resolve().parents[2] / "policies"
SHIPPED = sorted([*ROOT.glob("*.yaml"), *ROOT.glob("examples/*.yaml")])
KEY_VARS = ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "SMALL_API_KEY"]


def test_the_expected_policies_ship():
    names = {p.relative_to(ROOT).as_posix() for p in SHIPPED}
    assert names == {
        "default.yaml",
        "examples/demo.yaml",
        "examples/self-hosted.yaml",
        "examples/budget-first.yaml",
        "examples/quality-first.yaml",
    }


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_shipped_policy_loads_and_routes(path, monkeypatch):
    for var in KEY_VARS:
        monkeypatch.delenv(var, raising=False)
    skills, discrimination = estimator_skills()
    policy = load_policy(path, skills=skills, discrimination=discrimination)
    assert policy.routes and policy.default_route in policy.routes
    for route in policy.routes.values():
        for difficulty in (-1.5, 0.0, 1.5):
            inp = RouteInput(
                model=route.name, difficulty=difficulty, prompt_text="hello", prompt_tokens=50
            )
            d = decide(policy, inp, NoLiveStats())
            assert d.model in policy.models and d.route == route.name
            assert d.reference_model in policy.models


def test_demo_policy_sends_easy_prompts_small_and_hard_ones_big():
    skills, discrimination = estimator_skills()
    policy = load_policy(
        ROOT / "examples" / "demo.yaml", skills=skills, discrimination=discrimination
    )
    models = {m.upstream_model: m.base_url for m in policy.models.values()}
    assert models == {
        "mock-small": "http://127.0.0.1:9001/v1",
        "mock-big": "http://127.0.0.1:9002/v1",
    }
    easy = decide(policy, RouteInput(model="auto", difficulty=-1.0), NoLiveStats())
    hard = decide(policy, RouteInput(model="auto", difficulty=0.5), NoLiveStats())
    assert (easy.model, easy.reason, easy.fallbacks) == ("small", "cheapest_above_bar", ("big",))
    assert (hard.model, hard.reason) == ("big", "cheapest_above_bar")


def test_default_policy_takes_llama_skills_from_the_estimator():
    skills, discrimination = estimator_skills()
    policy = load_policy(ROOT / "default.yaml", skills=skills, discrimination=discrimination)
    for mid in ("llama-3.1-8b", "llama-3.1-70b"):
        assert policy.models[mid].skill_source.startswith("estimator:")
    hosted = [
        m
        for m in policy.models.values()
        if m.provider != "openai" or m.base_url and "api.openai.com" in m.base_url
    ]
    assert hosted and all(m.price_source.startswith("litellm:") for m in hosted)
