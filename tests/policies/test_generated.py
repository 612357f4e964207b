"""Generated valid policy files compile; mutated ones fail with located errors, never a crash."""

from __future__ import annotations

import copy
import re
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.errors import PolicyLoadError
from policies.loader import build_policy

ERROR_LINE = re.compile(r"^policy\.yaml:\d+: \S+: .+$")
NAME = st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True)
PRICE = st.floats(0, 100, allow_nan=False)
BAR = st.floats(0, 1)
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=True),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    ids = draw(st.lists(NAME, min_size=1, max_size=4, unique=True))
    models = []
    for mid in ids:
        m: dict[str, Any] = {
            "id": mid,
            "provider": "openai",
            "base_url": f"http://{mid}.local/v1",
            "input_usd_per_mtok": draw(PRICE),
            "output_usd_per_mtok": draw(PRICE),
            "context_window": draw(st.integers(1, 10**6)),
            "skill": draw(st.floats(-5, 5)),
        }
        if draw(st.booleans()):
            m["capabilities"] = draw(
                st.lists(
                    st.sampled_from(["tools", "vision", "json_schema", "streaming"]), unique=True
                )
            )
        if draw(st.booleans()):
            m["timeouts"] = {"total_s": draw(st.floats(1, 600))}
        models.append(m)
    route_names = draw(
        st.lists(
            NAME.filter(lambda n: n not in ids and n != "auto"), min_size=1, max_size=3, unique=True
        )
    )
    routes = []
    for name in route_names:
        r: dict[str, Any] = {
            "name": name,
            "candidates": draw(st.permutations(ids))[: draw(st.integers(1, len(ids)))],
        }
        if draw(st.booleans()):
            r["quality_bar"] = draw(BAR)
        if draw(st.booleans()):
            r["rules"] = [
                {
                    "when": {"task": ["t"]},
                    "model": draw(st.sampled_from(ids)),
                    "quality_bar": draw(BAR),
                }
            ]
        routes.append(r)
    return {
        "version": 1,
        "models": models,
        "routes": routes,
        "default_route": draw(st.sampled_from(route_names)),
    }


def build(doc: Any) -> Any:
    return build_policy(
        yaml.safe_dump(doc).encode(), path="policy.yaml", skills={}, discrimination=1.0
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_generated_valid_policies_compile(doc: dict[str, Any]) -> None:
    policy = build(doc)
    assert set(policy.models) == {m["id"] for m in doc["models"]}
    assert set(policy.routes) == {r["name"] for r in doc["routes"]}
    assert policy.targets["auto"].name == doc["default_route"]


def mutate(doc: dict[str, Any], kind: str, pick: int) -> dict[str, Any]:
    """Break the document in a way that must be rejected."""
    doc = copy.deepcopy(doc)
    model = doc["models"][pick % len(doc["models"])]
    route = doc["routes"][pick % len(doc["routes"])]
    if kind == "drop_required":
        del model[["id", "provider", "base_url"][pick % 3]]
    elif kind == "unknown_key":
        [doc, model, route][pick % 3]["colour"] = "red"
    elif kind == "wrong_type":
        model[["input_usd_per_mtok", "context_window", "skill"][pick % 3]] = "lots"
    elif kind == "negative_price":
        model["output_usd_per_mtok"] = -1.0
    elif kind == "bad_reference":
        route["candidates"] = [*route["candidates"], "no-such-model"]
    elif kind == "bad_default":
        doc["default_route"] = "no-such-route"
    elif kind == "bar_out_of_range":
        route["quality_bar"] = 1.5
    else:  # collide
        route["name"] = model["id"]
    return doc


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    documents(),
    st.sampled_from(
        [
            "drop_required",
            "unknown_key",
            "wrong_type",
            "negative_price",
            "bad_reference",
            "bad_default",
            "bar_out_of_range",
            "collide",
        ]
    ),
    st.integers(0, 100),
)
def test_mutated_policies_fail_with_located_errors(doc, kind, pick) -> None:
    try:
        build(mutate(doc, kind, pick))
    except PolicyLoadError as exc:
        assert exc.errors and all(ERROR_LINE.match(line) for line in exc.errors), exc.errors
    else:
        raise AssertionError(f"mutation {kind} was accepted")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents(), st.data())
def test_random_junk_anywhere_never_crashes(doc, data) -> None:
    """Replace any one value with junk: the result compiles or fails with located errors."""
    paths: list[tuple[Any, ...]] = []

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, (*path, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, (*path, i))

    walk(doc, ())
    path = data.draw(st.sampled_from(paths[1:]))
    broken = copy.deepcopy(doc)
    parent = broken
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = data.draw(JUNK)
    try:
        build(broken)
    except PolicyLoadError as exc:
        assert exc.errors and all(re.match(r"^policy\.yaml:\d+: ", e) for e in exc.errors)
