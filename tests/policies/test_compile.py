"""compile_policy: cross-checks, price and skill resolution, name resolution."""

from __future__ import annotations

import math
from types import MappingProxyType

import pytest

from policies.compile import compile_policy
from policies.compiled import Target, needs_difficulty, resolve
from policies.errors import PolicyCompileError, PolicyLoadError
from policies.schema import ALL_CAPABILITIES, PolicyFile
from tests.policies.conftest import MINIMAL, THREE


def model(mid: str, **extra: object) -> str:
    fields = {
        "id": mid,
        "provider": "openai",
        "base_url": "http://h/v1",
        "input_usd_per_mtok": 1.0,
        "output_usd_per_mtok": 2.0,
        "context_window": 1000,
    }
    fields.update(extra)
    return "  - {" + ", ".join(f"{k}: {v}" for k, v in fields.items() if v is not None) + "}\n"


def policy_text(models: str, routes: str, default: str = "r") -> str:
    return f"version: 1\nmodels:\n{models}routes:\n{routes}default_route: {default}\n"


def errors(compile_text, text: str, **kwargs) -> list[str]:
    with pytest.raises(PolicyLoadError) as info:
        compile_text(text, **kwargs)
    return list(info.value.errors)


def test_compiled_policy_is_immutable(compile_text):
    policy = compile_text(MINIMAL)
    assert isinstance(policy.models, MappingProxyType)
    assert isinstance(policy.routes, MappingProxyType)
    with pytest.raises(TypeError):
        policy.models["x"] = policy.models["small"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        policy.default_route = "x"
    assert policy.version == 1 and policy.log_prompts is False and policy.path == "policy.yaml"
    assert policy.budget_daily_usd is None
    assert policy.models["small"].capabilities == ALL_CAPABILITIES
    assert policy.models["small"].timeouts.first_byte_s == 60.0


def test_full_model_and_route_fields(compile_text):
    text = """\
version: 1
log_prompts: true
budget: {daily_usd: 50.0}
default_expected_output_tokens: 300
models:
  - id: small
    provider: openai
    base_url: http://127.0.0.1:9001/v1
    upstream_model: mock-small
    api_key_env: SMALL_API_KEY
    input_usd_per_mtok: 0.15
    output_usd_per_mtok: 0.60
    cached_input_usd_per_mtok: 0.075
    context_window: 128000
    max_output_tokens: 16384
    skill: 1.2
    capabilities: [tools, streaming]
    local_gpus: [0, 1]
    timeouts: {connect_s: 2, first_byte_s: 30, idle_s: 10, total_s: 120}
    max_retries: 1
    max_connections: 8
routes:
  - name: auto
    candidates: [small]
    quality_bar: 0.8
    min_quality_bar: 0.5
    max_quality_bar: 0.99
    max_cost_usd: 0.5
    rules:
      - name: legal
        when: {task: [legal_review], keywords: [contract, c++], has_tools: true}
        quality_bar: 0.97
default_route: auto
"""
    policy = compile_text(text)
    m = policy.models["small"]
    assert (m.cached_input_usd_per_mtok, m.max_output_tokens, m.skill) == (0.075, 16384, 1.2)
    assert m.capabilities == frozenset({"tools", "streaming"})
    assert m.local_gpus == (0, 1)
    assert (m.timeouts.connect_s, m.timeouts.total_s) == (2.0, 120.0)
    assert (m.max_retries, m.max_connections) == (1, 8)
    assert (m.price_source, m.skill_source) == ("policy", "policy")
    assert policy.log_prompts is True and policy.budget_daily_usd == 50.0
    assert policy.default_expected_output_tokens == 300
    route = policy.routes["auto"]
    assert (route.quality_bar, route.min_quality_bar, route.max_quality_bar) == (0.8, 0.5, 0.99)
    assert route.max_cost_usd == 0.5 and route.uses_quality_bar
    (rule,) = route.rules
    assert rule.name == "legal" and rule.tasks == frozenset({"legal_review"})
    assert rule.keywords is not None and rule.keywords.search("about C++ code")
    assert not rule.keywords.search("contractor")


def test_prices_and_context_window_come_from_the_litellm_table(compile_text):
    text = policy_text(
        model(
            "gpt",
            upstream_model="gpt-4o-mini",
            input_usd_per_mtok=None,
            output_usd_per_mtok=None,
            context_window=None,
        )
        + model(
            "g",
            provider="gemini",
            upstream_model="gemini-2.5-flash",
            input_usd_per_mtok=None,
            output_usd_per_mtok=None,
            context_window=None,
            base_url=None,
        ),
        "  - {name: r, candidates: [gpt, g]}\n",
    )
    policy = compile_text(text)
    gpt, gemini = policy.models["gpt"], policy.models["g"]
    assert (gpt.input_usd_per_mtok, gpt.output_usd_per_mtok) == (0.15, 0.6)
    assert gpt.cached_input_usd_per_mtok == 0.075
    assert (gpt.context_window, gpt.max_output_tokens) == (128000, 16384)
    assert gpt.price_source == "litellm:gpt-4o-mini"
    assert gemini.price_source == "litellm:gemini/gemini-2.5-flash"
    assert gemini.base_url is None and gemini.provider == "gemini"


def test_explicit_price_wins_over_the_table(compile_text):
    text = policy_text(
        model("gpt", upstream_model="gpt-4o", input_usd_per_mtok=9.0, context_window=None),
        "  - {name: r, candidates: [gpt]}\n",
    )
    m = compile_text(text).models["gpt"]
    assert (m.input_usd_per_mtok, m.output_usd_per_mtok, m.context_window) == (9.0, 2.0, 128000)
    assert m.price_source == "policy"
    # one price missing: the table fills it and says so
    text = policy_text(
        model("gpt", upstream_model="gpt-4o", output_usd_per_mtok=None),
        "  - {name: r, candidates: [gpt]}\n",
    )
    m = compile_text(text).models["gpt"]
    assert (m.input_usd_per_mtok, m.output_usd_per_mtok) == (1.0, 10.0)
    assert m.price_source == "litellm:gpt-4o"


def test_model_without_a_price_names_the_fields(compile_text):
    text = policy_text(
        model(
            "x",
            upstream_model="no-such-model",
            input_usd_per_mtok=None,
            output_usd_per_mtok=None,
            context_window=None,
        )
        + model("y", upstream_model="no-such-model", output_usd_per_mtok=None),
        "  - {name: r, candidates: [x]}\n",
    )
    assert errors(compile_text, text) == [
        "policy.yaml:3: models[0]: no price for 'no-such-model' in the policy or litellm's price "
        "table: set input_usd_per_mtok and output_usd_per_mtok",
        "policy.yaml:3: models[0]: no context window for 'no-such-model' in the policy or "
        "litellm's price table: set context_window",
        "policy.yaml:4: models[1]: no price for 'no-such-model' in the policy or litellm's price "
        "table: set output_usd_per_mtok",
    ]


def test_skills_resolve_by_id_then_upstream_model_case_insensitive(compile_text):
    text = policy_text(
        model("Gemini-Pro")
        + model("llama", upstream_model="Meta-Llama-3_1-8B-Instruct")
        + model("mine", skill=0.25, upstream_model="gemini-pro")
        + model("none"),
        "  - {name: r, candidates: [Gemini-Pro, llama, mine, none]}\n",
    )
    skills = {"gemini-pro": 1.5, "meta-llama-3_1-8b-instruct": -0.5}
    policy = compile_text(text, skills=skills)
    assert policy.models["Gemini-Pro"].skill == 1.5
    assert policy.models["Gemini-Pro"].skill_source == "estimator:gemini-pro"
    assert policy.models["llama"].skill == -0.5
    assert policy.models["mine"].skill == 0.25 and policy.models["mine"].skill_source == "policy"
    assert policy.models["none"].skill is None and policy.models["none"].skill_source == "none"


@pytest.mark.parametrize(
    "route",
    [
        "  - {name: r, candidates: [a, b], quality_bar: 0.8}\n",
        "  - {name: r, candidates: [a, b], rules: [{when: {task: [x]}, quality_bar: 0.8}]}\n",
        "  - {name: r, candidates: [a], quality_bar: 0.8,"
        " rules: [{when: {task: [x]}, candidates: [b]}]}\n",
        "  - {name: r, candidates: [a], quality_bar: 0.8,"
        " rules: [{when: {task: [x]}, model: b}]}\n",
    ],
)
def test_skill_is_required_where_a_quality_bar_may_choose(compile_text, route):
    text = policy_text(model("a", skill=1.0) + model("b"), route)
    assert errors(compile_text, text, skills={"z": 1.0, "y": 2.0}) == [
        "policy.yaml:4: models[1].skill: model 'b' has no skill, and route 'r' uses a quality "
        "bar: set skill, or name it like an estimator model (known: y, z)"
    ]


def test_skill_is_not_required_without_a_bar(compile_text):
    policy = compile_text(MINIMAL)
    assert policy.models["small"].skill is None
    assert not policy.routes["auto"].uses_quality_bar


def test_missing_skill_reported_once_across_routes(compile_text):
    routes = "  - {name: r, candidates: [a], quality_bar: 0.8}\n" * 1 + (
        "  - {name: s, candidates: [a], quality_bar: 0.9}\n"
    )
    assert len(errors(compile_text, policy_text(model("a"), routes))) == 1


def test_namespace_checks(compile_text):
    text = policy_text(
        model("a") + model("a") + model("auto") + model("b"),
        "  - {name: r, candidates: [a]}\n  - {name: r, candidates: [a]}\n"
        "  - {name: b, candidates: [a]}\n  - {name: auto, candidates: [a]}\n",
    )
    assert errors(compile_text, text) == [
        "policy.yaml:4: models[1].id: duplicate model id 'a'",
        "policy.yaml:5: models[2].id: 'auto' is reserved: it means the default route",
        "policy.yaml:9: routes[1].name: duplicate route name 'r'",
        "policy.yaml:10: routes[2].name: 'b' is also a model id; routes and models share one "
        "namespace",
        "policy.yaml:11: routes[3].name: a route named 'auto' must be the default_route",
    ]


def test_reference_checks(compile_text):
    text = policy_text(
        model("a") + model("b"),
        "  - name: r\n    candidates: [a, x, a]\n    reference_model: y\n"
        "    rules:\n      - {when: {task: [t]}, candidates: [z]}\n"
        "      - {when: {task: [t]}, model: w}\n",
        default="q",
    )
    assert errors(compile_text, text) == [
        "policy.yaml:7: routes[0].candidates[1]: unknown model 'x' (declared: a, b)",
        "policy.yaml:7: routes[0].candidates[2]: model 'a' is listed twice",
        "policy.yaml:10: routes[0].rules[0].candidates[0]: unknown model 'z' (declared: a, b)",
        "policy.yaml:11: routes[0].rules[1].model: unknown model 'w'",
        "policy.yaml:8: routes[0].reference_model: unknown model 'y'",
        "policy.yaml:12: default_route: unknown route 'q' (declared: r)",
    ]


def test_route_over_a_model_that_failed_is_not_built_but_not_blamed(compile_text):
    text = policy_text(
        model("a", upstream_model="nope", input_usd_per_mtok=None),
        "  - {name: r, candidates: [a]}\n",
    )
    assert len(errors(compile_text, text)) == 1


def test_bars_must_be_ordered(compile_text):
    base = model("a", skill=1.0)
    text = policy_text(
        base,
        "  - {name: r, candidates: [a], min_quality_bar: 0.9,"
        " max_quality_bar: 0.5, quality_bar: 0.7}\n",
    )
    assert errors(compile_text, text) == [
        "policy.yaml:5: routes[0].min_quality_bar: min_quality_bar (0.9) is above "
        "max_quality_bar (0.5)"
    ]
    text = policy_text(
        base,
        "  - name: r\n    candidates: [a]\n    quality_bar: 0.4\n"
        "    min_quality_bar: 0.5\n    rules:\n"
        "      - {when: {task: [t]}, quality_bar: 0.2}\n",
    )
    assert errors(compile_text, text) == [
        "policy.yaml:7: routes[0].quality_bar: quality bar 0.4 is outside "
        "[min_quality_bar 0.5, max_quality_bar 1.0]",
        "policy.yaml:10: routes[0].rules[0].quality_bar: quality bar 0.2 is outside "
        "[min_quality_bar 0.5, max_quality_bar 1.0]",
    ]


def test_reference_model_defaults_to_the_most_expensive_candidate(compile_text):
    text = policy_text(
        model("a", input_usd_per_mtok=5.0, output_usd_per_mtok=5.0) + model("b") + model("c"),
        "  - {name: r, candidates: [b, a]}\n  - {name: s, candidates: [b], reference_model: c}\n",
    )
    policy = compile_text(text)
    assert policy.routes["r"].reference_model == "a"
    assert policy.routes["s"].reference_model == "c"


def test_unnamed_rules_get_positional_names(compile_text):
    text = policy_text(
        model("a"),
        "  - name: r\n    candidates: [a]\n    rules:\n"
        "      - {when: {task: [t]}, model: a}\n"
        "      - {name: named, when: {}, candidates: [a]}\n",
    )
    rules = compile_text(text).routes["r"].rules
    assert [r.name for r in rules] == ["rules[0]", "named"]
    assert rules[0].model is not None and rules[0].model.id == "a"
    assert rules[1].entries is not None and rules[1].entries[0].id == "a"


def test_resolve_and_needs_difficulty(compile_text):
    policy = compile_text(THREE)
    assert resolve(policy, "auto") == Target("route", "chat")
    assert resolve(policy, "chat") == Target("route", "chat")
    assert resolve(policy, "small") == Target("model", "small")
    assert resolve(policy, "nope") is None
    assert resolve(policy, "small", route_override="fixed") == Target("route", "fixed")
    assert resolve(policy, "small", route_override="big") == Target("model", "small")
    assert resolve(policy, "small", route_override="nope") == Target("model", "small")
    assert needs_difficulty(policy, "auto") is True
    assert needs_difficulty(policy, "chat") is True
    assert needs_difficulty(policy, "fixed") is False
    assert needs_difficulty(policy, "small") is False
    assert needs_difficulty(policy, "nope") is False
    assert needs_difficulty(policy, "fixed", route_override="chat") is True


@pytest.mark.parametrize("a", [0.0, -1.0, math.inf, math.nan])
def test_discrimination_must_be_positive_and_finite(a):
    spec = PolicyFile.model_validate(
        {
            "version": 1,
            "models": [
                {
                    "id": "m",
                    "provider": "openai",
                    "base_url": "http://h",
                    "input_usd_per_mtok": 1.0,
                    "output_usd_per_mtok": 1.0,
                    "context_window": 10,
                }
            ],
            "routes": [{"name": "r", "candidates": ["m"]}],
            "default_route": "r",
        }
    )
    with pytest.raises(ValueError, match="discrimination"):
        compile_policy(spec, skills={}, discrimination=a)


def test_compile_error_carries_issues():
    spec = PolicyFile.model_validate(
        {
            "version": 1,
            "models": [
                {
                    "id": "m",
                    "provider": "openai",
                    "base_url": "http://h",
                    "input_usd_per_mtok": 1.0,
                    "output_usd_per_mtok": 1.0,
                    "context_window": 10,
                }
            ],
            "routes": [{"name": "r", "candidates": ["m"]}],
            "default_route": "x",
        }
    )
    with pytest.raises(PolicyCompileError) as info:
        compile_policy(spec, skills={}, discrimination=1.0, price_table={})
    (issue,) = info.value.issues
    assert issue.loc == ("default_route",)
    assert str(info.value) == "default_route: unknown route 'x' (declared: r)"
