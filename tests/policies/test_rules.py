"""Rule matching: each condition kind, conjunction, and first-match order."""

from __future__ import annotations

import pytest

from policies.engine import NoLiveStats, RouteInput, decide
from tests.policies.conftest import PolicyFactory

HEAD = """\
version: 1
models:
  - {id: a, provider: openai, base_url: "http://h", input_usd_per_mtok: 1.0,
     output_usd_per_mtok: 1.0, context_window: 100000}
  - {id: b, provider: openai, base_url: "http://h", input_usd_per_mtok: 2.0,
     output_usd_per_mtok: 2.0, context_window: 100000}
routes:
  - name: r
    candidates: [a, b]
    rules:
"""


def rule_for(compile_text: PolicyFactory, when: str):
    policy = compile_text(
        HEAD + f"      - {{name: hit, when: {when}, model: b}}\ndefault_route: r\n"
    )

    def matched(**fields: object) -> bool:
        d = decide(policy, RouteInput(model="r", **fields), NoLiveStats())  # type: ignore[arg-type]
        assert (d.rule == "hit") == (d.model == "b")
        return d.rule == "hit"

    return matched


def test_task(compile_text):
    matched = rule_for(compile_text, "{task: [legal_review, architecture]}")
    assert matched(task="legal_review") and matched(task="architecture")
    assert not matched(task="chat") and not matched()


def test_prompt_regex(compile_text):
    matched = rule_for(compile_text, r"{prompt_regex: '(?i)\bsql\s+injection\b'}")
    assert matched(prompt_text="is this an SQL  injection?")
    assert not matched(prompt_text="sql is fine") and not matched()


def test_keywords_any_case_insensitive_whole_word(compile_text):
    matched = rule_for(compile_text, "{keywords: [Contract, 'c++', 'net present value']}")
    assert matched(prompt_text="review this CONTRACT please")
    assert matched(prompt_text="a C++ question")
    assert matched(prompt_text="what is the Net Present Value here")
    assert not matched(prompt_text="subcontractors and contracts")  # whole words only
    assert not matched(prompt_text="abc++ code")
    assert not matched(prompt_text="")


def test_has_tools_and_has_images(compile_text):
    tools = rule_for(compile_text, "{has_tools: true}")
    assert tools(needs=frozenset({"tools"})) and not tools(needs=frozenset({"vision"}))
    no_tools = rule_for(compile_text, "{has_tools: false}")
    assert no_tools() and not no_tools(needs=frozenset({"tools", "streaming"}))
    images = rule_for(compile_text, "{has_images: true}")
    assert images(needs=frozenset({"vision"})) and not images()
    no_images = rule_for(compile_text, "{has_images: false}")
    assert no_images() and not no_images(needs=frozenset({"vision"}))


def test_prompt_token_bounds(compile_text):
    matched = rule_for(compile_text, "{min_prompt_tokens: 100, max_prompt_tokens: 200}")
    assert matched(prompt_tokens=100) and matched(prompt_tokens=200)
    assert not matched(prompt_tokens=99) and not matched(prompt_tokens=201)


def test_all_conditions_must_hold(compile_text):
    matched = rule_for(compile_text, "{task: [code], keywords: [rust], min_prompt_tokens: 10}")
    assert matched(task="code", prompt_text="in Rust", prompt_tokens=10)
    assert not matched(task="code", prompt_text="in Go", prompt_tokens=10)
    assert not matched(task="chat", prompt_text="in Rust", prompt_tokens=10)
    assert not matched(task="code", prompt_text="in Rust", prompt_tokens=9)


def test_empty_when_always_matches(compile_text):
    matched = rule_for(compile_text, "{}")
    assert matched() and matched(task="x", prompt_text="y")


def test_first_matching_rule_wins(compile_text):
    policy = compile_text(
        HEAD
        + "      - {name: first, when: {task: [t]}, model: b}\n"
        + "      - {name: second, when: {task: [t]}, model: a}\n"
        + "      - {name: third, when: {}, candidates: [b, a]}\n"
        + "default_route: r\n"
    )
    d = decide(policy, RouteInput(model="r", task="t"), NoLiveStats())
    assert (d.rule, d.model) == ("first", "b")
    d = decide(policy, RouteInput(model="r", task="u"), NoLiveStats())
    assert (d.rule, d.model, d.reason) == ("third", "b", "first_candidate")


@pytest.mark.parametrize(
    ("when", "error"),
    [
        ("{prompt_regex: '(unclosed'}", "when.prompt_regex: invalid regular expression: "),
        (
            "{min_prompt_tokens: 5, max_prompt_tokens: 4}",
            "when: min_prompt_tokens (5) is above max_prompt_tokens (4)",
        ),
        ("{keywords: []}", "when.keywords: must list at least one item"),
        ("{task: [legal], colour: red}", "when.colour: unknown field"),
        ("{has_tools: 'yes'}", "when.has_tools: Input should be a valid boolean"),
    ],
)
def test_bad_conditions_are_load_errors(compile_text, when, error):
    from policies.errors import PolicyLoadError

    with pytest.raises(PolicyLoadError) as info:
        rule_for(compile_text, when)
    (line,) = info.value.errors
    assert line.startswith(f"policy.yaml:11: routes[0].rules[0].{error}")
