"""``effgate eval --policy``: replay a small generated dataset with a fake estimator."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from policies.__main__ import main as module_main
from policies.replay import (
    DataStats,
    ReplayError,
    main,
    rules_text,
    shipped_estimator,
)
from policies.replay_data import parse_prompt, read_prompts

POLICY = """\
version: 1
default_expected_output_tokens: 100
models:
  - {id: small, provider: openai, base_url: "http://s/v1", upstream_model: data-small,
     input_usd_per_mtok: 1.0, output_usd_per_mtok: 2.0, context_window: 1000}
  - {id: big, provider: openai, base_url: "http://b/v1", upstream_model: data-big,
     input_usd_per_mtok: 10.0, output_usd_per_mtok: 20.0, context_window: 100000}
  - {id: other, provider: openai, base_url: "http://o/v1", input_usd_per_mtok: 1.0,
     output_usd_per_mtok: 1.0, context_window: 1000, skill: 0.0}
  - {id: bare, provider: openai, base_url: "http://o/v1", input_usd_per_mtok: 0.5,
     output_usd_per_mtok: 0.5, context_window: 1000}
routes:
  - name: auto
    candidates: [small, big]
    quality_bar: 0.7
  - name: plain
    candidates: [other, small, bare]
default_route: auto
"""


def label(
    score: float, inp: int | None = None, out: int | None = None, chars: int | None = None
) -> dict[str, Any]:
    return {
        "score": score,
        "cost_usd": None,
        "input_tokens": inp,
        "output_tokens": out,
        "output_chars": chars,
    }


# difficulty = the number in the prompt; small (skill 0) clears 0.7 only for d <= -0.85
ROWS = [
    {
        "id": "t:1",
        "source": "t",
        "task": "x",
        "prompt": "-2",
        "models": {"data-small": label(1, 10, 20), "data-big": label(1, 10, 40)},
    },
    {
        "id": "t:2",
        "source": "t",
        "task": "x",
        "prompt": "1",
        "models": {"data-small": label(0, 10, 20), "data-big": label(1, 10, 40)},
    },
    {
        "id": "t:3",
        "source": "t",
        "task": "x",
        "prompt": "0.5",  # no token counts: estimates
        "models": {"data-small": label(0, chars=400), "data-big": label(0.5, chars=800)},
    },
    {
        "id": "t:4",
        "source": "t",
        "task": "x",
        "prompt": "2",  # big chosen, no label for it
        "models": {"data-small": label(0, 10, 20)},
    },
]


class FakeEstimator:
    skills: Mapping[str, float] = {"data-small": 0.0, "data-big": 2.0}
    discrimination = 1.0

    def difficulty(self, messages: Sequence[Any]) -> float:
        return float(messages[-1]["content"].split()[0])


def fake_loader(artifact: str | None) -> FakeEstimator:
    if artifact == "broken":
        raise ReplayError("estimator: broken")
    return FakeEstimator()


def plain_text(messages: Sequence[Any]) -> str:
    return " ".join(m["content"] for m in messages)


@pytest.fixture
def files(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return policy, data, tmp_path / "report.json"


def run(argv: list[str]) -> int:
    return main(argv, estimator_loader=fake_loader, prompt_text=plain_text)


def test_replay_report(files, capsys):
    policy, data, out = files
    assert run(["--policy", str(policy), "--data", str(data), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["route"] == "auto" and report["quality_bar"] == 0.7
    assert report["reference_model"] == "big" and report["prompts"] == 4
    assert report["mapping"] == {"small": "data-small", "big": "data-big"}
    by_name = {s["strategy"]: s for s in report["strategies"]}
    assert list(by_name) == ["policy", "always big", "always small"]
    pol, big, small = by_name["policy"], by_name["always big"], by_name["always small"]
    # policy: t1 -> small (d=-2), t2, t3, t4 -> big
    assert pol["model_mix"] == {"big": 0.75, "small": 0.25}
    assert pol["labeled"] == 3 and pol["unlabeled"] == {"big": 1}
    assert pol["quality"] == pytest.approx((1 + 1 + 0.5) / 3)
    # costs: t1 small 10*1+20*2; t2 big 10*10+40*20; t3 big est. 1 token in, 200 out;
    # t4 big: 1 token in, output = the data mean for big: (40 + 40 + 200) / 3
    t4 = 10 + 280 / 3 * 20
    assert pol["cost_usd"] == pytest.approx((50 + 900 + (10 + 4000) + t4) / 1e6)
    assert big["cost_usd"] == pytest.approx((900 + 900 + 4010 + t4) / 1e6)
    assert small["cost_usd"] == pytest.approx((50 + 50 + (1 + 200) + 50) / 1e6)
    assert big["quality"] == pytest.approx(2.5 / 3) and big["unlabeled"] == {"big": 1}
    assert small["quality"] == pytest.approx(0.25) and small["unlabeled"] == {}
    assert big["savings_vs_reference"] == 0.0
    assert pol["savings_vs_reference"] == pytest.approx(1 - pol["cost_usd"] / big["cost_usd"])
    assert small["predicted_quality"] == pytest.approx(
        sum(1 / (1 + 2.718281828459045 ** (d)) for d in (-2, 1, 0.5, 2)) / 4, rel=1e-6
    )
    text = capsys.readouterr().out
    assert "route auto (quality bar 0.7), 4 prompts" in text
    assert "mapping: small=data-small, big=data-big" in text
    assert 'no label for: {"big": 1}' in text
    assert "always big (ref)" in text


def test_map_route_and_limit(files):
    policy, data, out = files
    argv = [
        "--policy",
        str(policy),
        "--data",
        str(data),
        "--json",
        str(out),
        "--route",
        "plain",
        "--map",
        "data-big=other",
        "data-small=small",
        "--limit",
        "2",
    ]
    assert run(argv) == 0
    report = json.loads(out.read_text())
    assert report["prompts"] == 2 and report["quality_bar"] is None
    assert report["mapping"]["other"] == "data-big"
    pol, *singles = report["strategies"]
    assert pol["model_mix"] == {"other": 1.0} and pol["quality"] == 1.0
    bare = singles[-1]
    assert bare["strategy"] == "always bare" and bare["predicted_quality"] is None
    assert bare["quality"] is None and bare["unlabeled"] == {"bare": 2}


def test_prompts_with_no_eligible_model_are_counted(files, tmp_path, capsys):
    policy, _, out = files
    data = tmp_path / "long.jsonl"
    row = {**ROWS[0], "prompt": "-2 " + "x" * 400_000}
    data.write_text(json.dumps(row) + "\n")
    assert run(["--policy", str(policy), "--data", str(data), "--json", str(out)]) == 0
    pol = json.loads(out.read_text())["strategies"][0]
    assert pol["no_eligible"] == {"context": 1} and pol["prompts"] == 1
    assert pol["quality"] is None and pol["model_mix"] == {}
    assert 'no eligible model: {"context": 1}' in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        (["--route", "small"], "error: --route 'small': not a route (auto, plain)"),
        (["--map", "nonsense"], "error: --map 'nonsense': expected DATA_MODEL=CATALOG_ID"),
        (["--map", "data-big=nope"], "error: --map 'data-big=nope': no catalog model 'nope'"),
        (
            ["--map", "nope=big"],
            "error: --map 'nope=big': no data model 'nope' (known: data-big, data-small)",
        ),
        (["--artifact", "broken"], "error: estimator: broken"),
    ],
)
def test_bad_arguments(files, capsys, extra, error):
    policy, data, _ = files
    assert run(["--policy", str(policy), "--data", str(data), *extra]) == 1
    assert capsys.readouterr().err.startswith(error)


def test_bad_inputs(files, tmp_path, capsys):
    policy, data, _ = files
    assert run(["--policy", str(tmp_path / "none.yaml"), "--data", str(data)]) == 1
    assert "cannot read" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text("[]\n")
    assert run(["--policy", str(policy), "--data", str(bad)]) == 1
    assert capsys.readouterr().err == f"error: {bad}:1: expected a JSON object\n"
    assert run(["--policy", str(policy), "--data", str(tmp_path / "none.jsonl")]) == 1


def test_data_stats_average_output_tokens(files):
    _, data, _ = files
    prompts = [
        *read_prompts([data]),
        parse_prompt({"prompt": "p", "models": {"no-counts": label(1)}}, "here"),
    ]
    mapping = {"small": "data-small", "big": "data-big", "x": "missing", "y": "no-counts"}
    stats = DataStats(prompts, mapping)
    assert stats.avg_output_tokens("auto", "small") == pytest.approx((20 + 20 + 100 + 20) / 4)
    assert stats.avg_output_tokens("auto", "x") is None
    assert stats.avg_output_tokens("auto", "y") is None
    assert stats.circuit_open("small") is False


def with_skills(tmp_path: Path) -> Path:
    real = tmp_path / "real.yaml"
    text = POLICY.replace("upstream_model: data-small", "upstream_model: data-small, skill: -0.5")
    real.write_text(
        text.replace("upstream_model: data-big", "upstream_model: data-big, skill: 1.5")
    )
    return real


def test_with_the_shipped_estimator(files, tmp_path, capsys):
    """The real router_models estimator and rule text, end to end (text report only)."""
    _, data, _ = files
    assert main(["--policy", str(with_skills(tmp_path)), "--data", str(data)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = ["strategy", "quality", "predicted", "cost_usd", "saved", "unlabeled", "model", "mix"]
    assert lines[2] == "P(acceptable): the IRT formula (difficulty and skills)"  # no heads
    assert lines[3].split() == header
    assert lines[4].startswith("policy ")
    assert rules_text([{"role": "user", "content": "hi"}]) == "hi"
    with pytest.raises(ReplayError, match="estimator"):
        shipped_estimator(str(tmp_path))


def test_python_dash_m_policies_eval(files, tmp_path):
    _, data, out = files
    policy = with_skills(tmp_path)
    assert (
        module_main(
            [
                "eval",
                "--policy",
                str(policy),
                "--data",
                str(data),
                "--route",
                "plain",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["route"] == "plain"


def test_unlabelled_models_cost_their_expected_output_tokens(files, tmp_path):
    policy, data, out = files
    argv = ["--data", str(data), "--json", str(out), "--route", "plain"]
    assert run(["--policy", str(policy), *argv]) == 0
    before = {s["strategy"]: s["cost_usd"] for s in json.loads(out.read_text())["strategies"]}
    tuned = tmp_path / "tuned.yaml"
    tuned.write_text(
        POLICY.replace(
            "output_usd_per_mtok: 0.5,", "output_usd_per_mtok: 0.5, expected_output_tokens: 300,"
        )
    )
    assert run(["--policy", str(tuned), *argv]) == 0
    after = {s["strategy"]: s["cost_usd"] for s in json.loads(out.read_text())["strategies"]}
    # bare has no data: 4 prompts x (300 - 100 default) more output tokens at $0.5/Mtok
    assert after["always bare"] - before["always bare"] == pytest.approx(4 * 200 * 0.5 / 1e6)
    assert after["always small"] == before["always small"]  # labelled: the data's tokens


def test_quality_bar_rows_preview_other_bars(files):
    policy, data, out = files
    argv = ["--policy", str(policy), "--data", str(data), "--json", str(out)]
    assert run([*argv, "--quality-bar", "0.25", "0.9"]) == 0
    by_name = {s["strategy"]: s for s in json.loads(out.read_text())["strategies"]}
    # P(small) = sigmoid(-d) for d = -2, 1, 0.5, 2: 0.88, 0.27, 0.38, 0.12
    assert by_name["policy"]["model_mix"] == {"big": 0.75, "small": 0.25}
    assert by_name["policy (bar 0.25)"]["model_mix"] == {"small": 0.75, "big": 0.25}
    assert by_name["policy (bar 0.9)"]["model_mix"] == {"big": 1.0}
    low, high = by_name["policy (bar 0.25)"], by_name["policy (bar 0.9)"]
    assert low["cost_usd"] < by_name["policy"]["cost_usd"] < high["cost_usd"]
    assert low["predicted_quality"] < high["predicted_quality"]


def test_quality_bar_outside_the_route_bounds_is_refused(files, tmp_path, capsys):
    policy, data, _ = files
    bounded = tmp_path / "bounded.yaml"
    bounded.write_text(
        POLICY.replace("quality_bar: 0.7", "quality_bar: 0.7\n    max_quality_bar: 0.8")
    )
    assert run(["--policy", str(bounded), "--data", str(data), "--quality-bar", "0.9"]) == 1
    assert "--quality-bar 0.9: outside route 'auto''s bounds 0..0.8" in capsys.readouterr().err
    assert (
        run(
            [
                "--policy",
                str(policy),
                "--data",
                str(data),
                "--route",
                "plain",
                "--quality-bar",
                "0.5",
            ]
        )
        == 1
    )
    assert "route 'plain' has no quality bar" in capsys.readouterr().err


class LearnedScorer:
    """A route scorer with a learned head for ``small`` (as `router_models.Estimator.scorer`
    makes one): P 0.95 where the row's task is "x", else 0.1, whatever the difficulty."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.learned = tuple(i for i in ids if i == "small")
        self.tasks: list[str | None] = []

    def __call__(
        self, messages: Sequence[Any], tools: Any, task: str | None
    ) -> tuple[float, dict[str, float]]:
        self.tasks.append(task)
        # its own difficulty (the estimator's + 1): the replay must use the scorer's
        d = FakeEstimator().difficulty(messages) + 1.0
        return d, {"small": 0.95 if task == "x" else 0.1}


class LearnedEstimator(FakeEstimator):
    def __init__(self, with_heads: bool = True) -> None:
        self.with_heads = with_heads
        self.made: list[LearnedScorer] = []

    def scorer(self, models: Sequence[tuple[str, str]]) -> LearnedScorer:
        sc = LearnedScorer([i for i, _ in models] if self.with_heads else [])
        self.made.append(sc)
        return sc


def test_learned_heads_give_the_candidates_p_as_in_the_gateway(files, capsys):
    """With an artifact that has learned heads, the replay routes by each candidate's P from
    them (the row's task as the workflow tag), as the gateway does, not by the IRT formula."""
    policy, data, out = files
    est = LearnedEstimator()
    argv = ["--policy", str(policy), "--data", str(data), "--json", str(out)]
    assert main(argv, estimator_loader=lambda _: est, prompt_text=plain_text) == 0
    report = json.loads(out.read_text())
    assert report["learned_heads"] == ["small"]
    by_name = {s["strategy"]: s for s in report["strategies"]}
    # small's head clears the 0.7 bar on every row (task x): the cheaper model everywhere,
    # where the IRT formula sent three of the four rows to big (test_replay_report)
    assert by_name["policy"]["model_mix"] == {"small": 1.0}
    assert by_name["always small"]["predicted_quality"] == pytest.approx(0.95)
    # big has no head: the IRT formula at the scorer's difficulty
    assert by_name["always big"]["predicted_quality"] == pytest.approx(
        sum(1 / (1 + 2.718281828459045 ** (d + 1.0 - 2.0)) for d in (-2, 1, 0.5, 2)) / 4,
        rel=1e-6,
    )
    assert est.made[0].tasks == ["x"] * 4
    text = capsys.readouterr().out
    assert "P(acceptable): the artifact's learned heads for small; the IRT formula for big" in text
    assert report["irt_models"] == ["big"]
    # heads for none of the route's models: the IRT formula throughout, and said so
    est = LearnedEstimator(with_heads=False)
    assert main(argv, estimator_loader=lambda _: est, prompt_text=plain_text) == 0
    assert json.loads(out.read_text())["learned_heads"] == []
    assert "P(acceptable): the IRT formula" in capsys.readouterr().out
