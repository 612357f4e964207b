"""Loading: every error names the file, the line and the dotted field path."""

from __future__ import annotations

import pytest

from policies.errors import PolicyLoadError
from policies.loader import build_policy, configured_skills, line_of, load_policy, parse_yaml
from tests.policies.conftest import MINIMAL


def errors_of(text: str, skills: dict[str, float] | None = None) -> list[str]:
    with pytest.raises(PolicyLoadError) as info:
        build_policy(text.encode(), path="policy.yaml", skills=skills or {}, discrimination=1.0)
    assert str(info.value) == "\n".join(info.value.errors)
    return list(info.value.errors)


def test_minimal_file_from_the_issue_loads(write):
    policy = load_policy(write(MINIMAL), skills={}, discrimination=1.0)
    assert list(policy.models) == ["small", "big"]
    assert policy.default_route == "auto"
    assert policy.models["small"].api_key_env == "SMALL_API_KEY"
    assert policy.models["small"].upstream_model == "mock-small"
    assert policy.routes["auto"].reference_model == "big"
    assert len(policy.sha256) == 64


def test_invalid_yaml_names_file_and_line():
    assert errors_of("version: 1\nmodels: [\n") == [
        "policy.yaml:3: invalid YAML: expected the node content, but found '<stream end>'"
    ]


def test_yaml_error_without_a_mark_still_reads():
    # a NUL byte is rejected by the YAML reader, which reports a position, not a mark
    (error,) = errors_of("version: 1\x00\n")
    assert error.startswith("policy.yaml:1: invalid YAML:")


def test_duplicate_key_is_rejected_with_its_line():
    text = MINIMAL.replace("default_route: auto", "default_route: auto\ndefault_route: auto")
    assert errors_of(text) == ["policy.yaml:9: invalid YAML: found duplicate key 'default_route'"]


def test_duplicate_key_inside_a_model():
    text = "version: 1\nmodels:\n  - id: a\n    provider: openai\n    id: b\n"
    assert errors_of(text) == ["policy.yaml:5: invalid YAML: found duplicate key 'id'"]


def test_merge_keys_are_not_duplicates(compile_text):
    text = """\
version: 1
x-base: &base {provider: openai, base_url: "http://h/v1", input_usd_per_mtok: 1.0,
               output_usd_per_mtok: 2.0, context_window: 1000}
models:
  - {<<: *base, id: a}
  - {<<: *base, id: b, context_window: 2000}
routes: [{name: r, candidates: [a, b]}]
default_route: r
"""
    # the anchor holder is an unknown top-level key: reported with its line
    assert errors_of(text) == [
        "policy.yaml:2: x-base: unknown field (check the spelling; extra fields are not allowed)"
    ]
    # anchors on the first model, merged into the second (which overrides one key)
    valid = """\
version: 1
models:
  - &base {provider: openai, base_url: "http://h/v1", input_usd_per_mtok: 1.0,
           output_usd_per_mtok: 2.0, context_window: 1000, id: a}
  - {<<: *base, id: b, context_window: 2000}
routes: [{name: r, candidates: [a, b]}]
default_route: r
"""
    policy = compile_text(valid)
    assert policy.models["b"].context_window == 2000
    assert policy.models["b"].input_usd_per_mtok == 1.0


def test_unhashable_key_is_a_yaml_error():
    (error,) = errors_of("version: 1\n? [a, b]\n: 1\n")
    assert error.startswith("policy.yaml:2: invalid YAML: found unhashable key")


def test_unknown_key_names_field_and_line():
    text = MINIMAL.replace("context_window: 128000}", "context_window: 128000, colour: red}", 1)
    assert errors_of(text) == [
        "policy.yaml:3: models[0].colour: unknown field "
        "(check the spelling; extra fields are not allowed)"
    ]


def test_wrong_type_names_field_and_line():
    text = MINIMAL.replace("input_usd_per_mtok: 2.50", 'input_usd_per_mtok: "2.50"')
    assert errors_of(text) == [
        "policy.yaml:4: models[1].input_usd_per_mtok: Input should be a valid number"
    ]


def test_block_style_lines_point_at_the_key():
    text = """\
version: 1
models:
  - id: small
    provider: openai
    base_url: http://h/v1
    input_usd_per_mtok: 0.1
    output_usd_per_mtok: nope
    context_window: 1000
routes:
  - name: auto
    candidates: [small]
default_route: auto
"""
    assert errors_of(text) == [
        "policy.yaml:7: models[0].output_usd_per_mtok: Input should be a valid number"
    ]


def test_missing_field_points_at_its_parent():
    text = "version: 1\nmodels:\n  - provider: openai\n    base_url: http://h/v1\n"
    errors = errors_of(text)
    assert "policy.yaml:3: models[0].id: Field required" in errors
    assert "policy.yaml:1: routes: Field required" in errors
    assert "policy.yaml:1: default_route: Field required" in errors


def test_model_level_problem_drops_pydantic_prefix():
    text = MINIMAL.replace('base_url: "http://127.0.0.1:9002/v1", ', "")
    assert errors_of(text) == [
        "policy.yaml:4: models[1]: base_url is required for provider openai "
        "(any OpenAI-compatible server)"
    ]


def test_bad_reference_names_field_and_line():
    text = MINIMAL.replace("candidates: [small, big]", "candidates: [small, bigg]")
    assert errors_of(text) == [
        "policy.yaml:7: routes[0].candidates[1]: unknown model 'bigg' (declared: small, big)"
    ]


def test_empty_file_and_wrong_top_level():
    assert errors_of("") == ["policy.yaml:1: the file is empty; expected a policy (version: 1)"]
    assert errors_of("# only a comment\n") == [
        "policy.yaml:1: the file is empty; expected a policy (version: 1)"
    ]
    assert errors_of("- 1\n- 2\n") == [
        "policy.yaml:1: (top level): Input should be a valid dictionary or instance of PolicyFile"
    ]


def test_wrong_version():
    (error,) = errors_of(MINIMAL.replace("version: 1", "version: 2"))
    assert error == "policy.yaml:1: version: Input should be 1"


def test_python_tags_are_refused():
    (error,) = errors_of("version: !!python/object/apply:os.system ['true']\n")
    assert error.startswith("policy.yaml:1: invalid YAML: could not determine a constructor")


def test_missing_file_is_a_load_error(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(PolicyLoadError) as info:
        load_policy(path, skills={}, discrimination=1.0)
    assert info.value.errors == (f"{path}:1: cannot read: No such file or directory",)


def test_several_errors_are_all_reported():
    text = MINIMAL.replace("candidates: [small, big]", "candidates: [tiny, huge]").replace(
        "default_route: auto", "default_route: nowhere"
    )
    assert errors_of(text) == [
        "policy.yaml:6: routes[0].name: a route named 'auto' must be the default_route",
        "policy.yaml:7: routes[0].candidates[0]: unknown model 'tiny' (declared: small, big)",
        "policy.yaml:7: routes[0].candidates[1]: unknown model 'huge' (declared: small, big)",
        "policy.yaml:8: default_route: unknown route 'nowhere' (declared: auto)",
    ]


def test_line_of_falls_back_to_ancestors_then_line_one():
    _, lines = parse_yaml(b"a:\n  b:\n    - x\n    - y\n", filename="f")
    assert line_of(lines, ("a", "b", 1)) == 4
    assert line_of(lines, ("a", "b", 7, "c")) == 2
    assert line_of(lines, ("zzz",)) == 1
    assert line_of(lines, ()) == 1


def test_a_rule_must_set_something():
    text = MINIMAL.replace(
        "candidates: [small, big]\n", "candidates: [small, big]\n    rules:\n      - when: {}\n"
    )
    assert errors_of(text) == [
        "policy.yaml:9: routes[0].rules[0]: a rule must set at least one of quality_bar, "
        "candidates, model"
    ]


def test_configured_skills_by_id_and_upstream_name(tmp_path):
    """What `effgate train --policy` takes as the prior of the policy's models: each skill
    under the model's id (records' names) and its upstream name (labelled files'), an id
    winning over another entry's upstream name; models without a skill left out."""
    text = MINIMAL.replace("context_window: 128000}", "context_window: 128000, skill: SKILL}")
    text = text.replace("SKILL", "0.25", 1).replace("SKILL", "1.5", 1)
    text = text.replace("upstream_model: mock-big", "upstream_model: small")
    extra = '  - {id: third, provider: openai, base_url: "http://t/v1", upstream_model: mock-3}\n'
    extra += (
        '  - {id: a1, provider: openai, base_url: "http://t/v1", upstream_model: dup, skill: 1}\n'
    )
    extra += (
        '  - {id: a2, provider: openai, base_url: "http://u/v1", upstream_model: dup, skill: 2}\n'
    )
    extra += (
        '  - {id: a3, provider: openai, base_url: "http://t/v1", upstream_model: same, skill: 1}\n'
    )
    extra += (
        '  - {id: a4, provider: openai, base_url: "http://u/v1", upstream_model: same, skill: 1}\n'
    )
    text = text.replace("routes:\n", extra + "routes:\n")
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    got = configured_skills(path)
    assert {k: got.pop(k) for k in ("a1", "a2", "a3", "a4")} == {"a1": 1, "a2": 2, "a3": 1, "a4": 1}
    # "dup" names two entries with different skills: its labels cannot say which
    assert got == {"small": 0.25, "big": 1.5, "mock-small": 0.25, "same": 1.0}
    path.write_text(MINIMAL.replace("version: 1", "version: 2"), encoding="utf-8")
    with pytest.raises(PolicyLoadError) as info:
        configured_skills(path)
    assert str(path) in str(info.value)
    with pytest.raises(PolicyLoadError, match="cannot read"):
        configured_skills(tmp_path / "none.yaml")
