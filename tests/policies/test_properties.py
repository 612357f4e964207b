"""Properties of decide() over generated policies, requests and live stats (hypothesis)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from policies.compile import compile_policy
from policies.compiled import CompiledPolicy, ModelEntry
from policies.engine import Decision, NoEligibleModel, RouteInput, decide
from policies.schema import PolicyFile
from tests.policies.fake_stats import FakeStats

CAPS = ["tools", "vision", "json_schema", "streaming"]


@dataclass(frozen=True)
class Scenario:
    policy: CompiledPolicy
    inp: RouteInput
    stats: FakeStats


# Strategies are built once: building them inside the composite dominates the run time.
PRICE = st.floats(0, 20, allow_nan=False)
WINDOW = st.integers(100, 20_000)
SKILL = st.floats(-3, 3)
CAPABILITIES = st.none() | st.lists(st.sampled_from(CAPS), unique=True)
MAX_OUT = st.none() | st.integers(1, 4000)
BAR = st.floats(0, 1)
COST_CAP = st.none() | st.floats(1e-6, 0.5)
NEEDS = st.lists(st.sampled_from(CAPS), unique=True, max_size=2)
A = st.floats(0.5, 3)
TOKENS = st.integers(0, 15_000)
REQUESTED_OUT = st.none() | st.integers(1, 5000)
AVG_OUT = st.floats(0, 3000)


@st.composite
def scenarios(draw: st.DrawFn, *, with_bar: bool | None = None) -> Scenario:
    n = draw(st.integers(1, 5))
    ids = [f"m{i}" for i in range(n)]
    models = [
        {
            "id": mid,
            "provider": "openai",
            "base_url": "http://h/v1",
            "input_usd_per_mtok": draw(PRICE),
            "output_usd_per_mtok": draw(PRICE),
            "context_window": draw(WINDOW),
            "skill": draw(SKILL),
            "capabilities": draw(CAPABILITIES),
            "max_output_tokens": draw(MAX_OUT),
        }
        for mid in ids
    ]
    order = draw(st.permutations(ids))
    candidates = order[: draw(st.integers(1, n))]
    bar_strategy = {None: st.none() | BAR, True: BAR, False: st.none()}[with_bar]
    bar = draw(bar_strategy)
    route = {
        "name": "r",
        "candidates": candidates,
        "quality_bar": bar,
        "max_cost_usd": draw(COST_CAP),
    }
    spec = PolicyFile.model_validate(
        {"version": 1, "models": models, "routes": [route], "default_route": "r"}
    )
    policy = compile_policy(spec, skills={}, discrimination=draw(A), price_table={})
    inp = RouteInput(
        model=draw(st.sampled_from(["r", "auto"])),
        difficulty=draw(SKILL),
        prompt_tokens=draw(TOKENS),
        max_output_tokens=draw(REQUESTED_OUT),
        needs=frozenset(draw(NEEDS)),
        max_cost_usd=draw(COST_CAP),
    )
    open_circuits = [m for m in ids if draw(st.integers(0, 3)) == 0]
    avg_output = {m: draw(AVG_OUT) for m in ids if draw(st.booleans())}
    return Scenario(policy, inp, FakeStats(open_circuits=open_circuits, avg_output=avg_output))


def oracle_eligible(s: Scenario, m: ModelEntry) -> bool:
    """Eligibility written out from the spec, independently of the engine."""
    inp, policy = s.inp, s.policy
    out = s.stats.avg_output.get(m.id, float(policy.default_expected_output_tokens))
    for limit in (inp.max_output_tokens, m.max_output_tokens):
        if limit is not None:
            out = min(out, limit)
    cost = (inp.prompt_tokens * m.input_usd_per_mtok + out * m.output_usd_per_mtok) / 1e6
    caps = [c for c in (policy.routes["r"].max_cost_usd, inp.max_cost_usd) if c is not None]
    return (
        inp.needs <= m.capabilities
        and inp.prompt_tokens + (inp.max_output_tokens or 0) <= m.context_window
        and m.id not in s.stats.open_circuits
        and all(cost <= c for c in caps)
    )


def run(s: Scenario, **changes: object) -> Decision | None:
    inp = replace(s.inp, **changes) if changes else s.inp  # type: ignore[arg-type]
    try:
        return decide(s.policy, inp, s.stats)
    except NoEligibleModel:
        return None


@settings(max_examples=120, deadline=None)
@given(scenarios())
def test_deterministic_declared_and_eligible(s: Scenario) -> None:
    route = s.policy.routes["r"]
    eligible = {m.id for m in route.entries if oracle_eligible(s, m)}
    first = run(s)
    assert run(s) == first
    if first is None:
        assert not eligible
        return
    assert first.model in s.policy.models and first.model in eligible
    assert set(first.fallbacks) == eligible - {first.model}
    assert len(first.fallbacks) == len(set(first.fallbacks))
    assert {c.model for c in first.candidates if c.eligible} == eligible
    assert first.reference_model in s.policy.models


@settings(max_examples=120, deadline=None)
@given(scenarios(with_bar=True))
def test_a_cheaper_model_that_clears_the_bar_is_never_passed_over(s: Scenario) -> None:
    d = run(s)
    if d is None:
        return
    assert d.quality_bar is not None and d.p is not None
    table = {c.model: c for c in d.candidates}
    chosen = table[d.model]
    clearing = [c for c in d.candidates if c.eligible and c.p is not None and c.p >= d.quality_bar]
    if d.reason == "cheapest_above_bar":
        assert d.p >= d.quality_bar
        assert all(c.expected_cost_usd >= chosen.expected_cost_usd for c in clearing)
    else:
        assert d.reason == "best_below_bar" and not clearing
        assert all(c.p is not None and c.p <= d.p for c in d.candidates if c.eligible)


@settings(max_examples=120, deadline=None)
@given(scenarios(with_bar=True), st.floats(0, 1), st.floats(0, 1))
def test_raising_the_bar_never_lowers_p(s: Scenario, b1: float, b2: float) -> None:
    low, high = sorted((b1, b2))
    d_low = run(s, quality_bar_override=low)
    d_high = run(s, quality_bar_override=high)
    if d_low is None or d_high is None:
        assert d_low is d_high is None  # eligibility does not depend on the bar
        return
    assert d_low.p is not None and d_high.p is not None
    assert d_high.p >= d_low.p


@settings(max_examples=120, deadline=None)
@given(scenarios(with_bar=True), st.floats(-3, 3), st.floats(-3, 3))
def test_threshold_routes_are_monotone_in_difficulty(s: Scenario, x: float, y: float) -> None:
    easy, hard = sorted((x, y))
    d_easy, d_hard = run(s, difficulty=easy), run(s, difficulty=hard)
    if d_easy is None or d_hard is None:
        assert d_easy is d_hard is None
        return
    models = s.policy.models
    skill_easy, skill_hard = models[d_easy.model].skill, models[d_hard.model].skill
    assert skill_easy is not None and skill_hard is not None
    assert skill_hard >= skill_easy - 1e-9  # harder prompts never go to a weaker model
    cost = {c.model: c.expected_cost_usd for c in d_hard.candidates}
    assert cost[d_hard.model] >= cost[d_easy.model] - 1e-15  # ... nor a cheaper one


@settings(max_examples=80, deadline=None)
@given(scenarios(with_bar=False))
def test_without_a_bar_candidate_order_is_kept(s: Scenario) -> None:
    d = run(s)
    if d is None:
        return
    order = [m for m in s.policy.routes["r"].candidates if m == d.model or m in d.fallbacks]
    assert [d.model, *d.fallbacks] == order
    assert d.reason == "first_candidate"
