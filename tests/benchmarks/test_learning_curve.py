"""The learning-curve benchmark's traffic scenarios: workflow tags (`--task-tags`,
`--tag-field`), system prompts (`--system-prompts`), the typical prompts it times."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks import curve_learner, labelled_files, learning_curve


def _write(path: Path, rows: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_row_tags_read_task_or_a_meta_key(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    _write(
        data,
        [
            {"id": "s:1", "task": "math", "meta": {"src": "theoremQA-Math"}},
            {"id": "s:2", "task": "law", "meta": {"other": 1}},
            {"id": "s:3", "task": "law"},
            {"id": "s:4", "task": "bio", "meta": {"src": 7}},
        ],
    )
    rows = [SimpleNamespace(id=f"s:{i}", task=t) for i, t in ((3, "law"), (1, "math"), (4, "bio"))]
    assert labelled_files.row_tags(data, rows, "task") == ["law", "math", "bio"]
    # by id, not by position; a row without the key has no tag
    assert labelled_files.row_tags(data, rows, "meta.src") == ["", "theoremQA-Math", "7"]
    rows.append(SimpleNamespace(id="s:2", task="law"))
    assert labelled_files.row_tags(data, rows, "meta.other")[-1] == "1"


@pytest.mark.parametrize("field", ["meta.", "src", "metasrc"])
def test_row_tags_refuse_other_fields(tmp_path: Path, field: str) -> None:
    data = tmp_path / "d.jsonl"
    _write(data, [{"id": "s:1", "task": "math"}])
    with pytest.raises(ValueError, match="tag field"):
        labelled_files.row_tags(data, [SimpleNamespace(id="s:1", task="math")], field)


@pytest.mark.parametrize("field", ["meta.", "source", "prompt"])
def test_cli_refuses_an_unknown_tag_field(
    tmp_path: Path, field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        learning_curve.main(["--data", str(tmp_path / "none.jsonl"), "--tag-field", field])
    assert exc.value.code == 2
    assert "--tag-field must be task or meta.KEY" in capsys.readouterr().err


def test_system_prompts_by_task_with_a_default(tmp_path: Path) -> None:
    from router_models.data import Row

    rows = [
        Row("s:1", "s", "math", ({"role": "user", "content": "1+1?"},), {}, 4),
        Row("s:2", "s", "law", ({"role": "user", "content": "Is it legal?"},), {}, 12),
    ]
    out = labelled_files.with_system_prompts(rows, {"math": "You do sums.", "*": "About {task}."})
    assert [m["content"] for m in out[0].messages] == ["You do sums.", "1+1?"]
    assert out[1].messages[0] == {"role": "system", "content": "About law."}
    assert [r.prompt_chars for r in out] == [4, 12]  # the user prompt's length, as before
    # no entry and no "*": unchanged
    assert labelled_files.with_system_prompts(rows, {"bio": "x"}) == tuple(rows)


def test_shipped_system_prompt_files_load(tmp_path: Path) -> None:
    shipped = Path(learning_curve.__file__).parent / "system_prompts"
    files = sorted(shipped.glob("*.json"))
    assert [f.stem for f in files] == ["llmrouter_train", "llmrouter_train_boilerplate", "mmlu_pro"]
    for f in files:
        prompts = labelled_files.load_system_prompts(f)
        assert prompts and all(v.strip() for v in prompts.values())
    bad = tmp_path / "bad.json"
    bad.write_text('{"math": 3}', encoding="utf-8")
    with pytest.raises(ValueError, match="task -> system prompt"):
        labelled_files.load_system_prompts(bad)


def test_cli_refuses_a_bad_system_prompt_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]", encoding="utf-8")
    for arg in (bad, tmp_path / "missing.json"):
        with pytest.raises(SystemExit) as exc:
            learning_curve.main(["--data", str(tmp_path / "d.jsonl"), "--system-prompts", str(arg)])
        assert exc.value.code == 2
    assert "expected a JSON object" in capsys.readouterr().err


def test_typical_prompts_are_the_user_text_whatever_the_system_prompt() -> None:
    from router_models.data import Row

    def row(text: str) -> Row:
        return Row("s:1", "s", "t", ({"role": "user", "content": text},), {}, len(text))

    rows = [row("a" * 1500), row("b" * 50), row("c" * 2500)]
    boiler = labelled_files.with_system_prompts(rows, {"*": "rules " * 500})
    assert labelled_files.typical_prompts(boiler) == ["a" * 1500]
    # none in range: every prompt rather than nothing to time
    short = labelled_files.with_system_prompts([row("b" * 50)], {"*": "rules " * 500})
    assert labelled_files.typical_prompts(short) == ["b" * 50]


def test_row_tags_survive_odd_meta_and_rows_without_an_id(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    _write(
        data,
        [
            {"id": "s:1", "task": "math", "meta": "not an object"},
            {"task": "law", "meta": {"src": "stemez-Law"}},  # no id: parse_row names it by place
            {"id": 7, "task": "bio", "meta": {"src": "x"}},
        ],
    )
    rows = [
        SimpleNamespace(id="s:1", task="math"),
        SimpleNamespace(id=f"{data}:2", task="law"),
        SimpleNamespace(id="7", task="bio"),
    ]
    assert labelled_files.row_tags(data, rows, "meta.src") == ["", "stemez-Law", "x"]


def test_cli_refuses_both_tag_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        learning_curve.main(
            ["--data", str(tmp_path / "d.jsonl"), "--task-tags", "--tag-field", "task"]
        )
    assert exc.value.code == 2
    assert "give one of them" in capsys.readouterr().err


def _unknown_models_file(tmp_path: Path, n: int = 90) -> Path:
    """A labelled file whose models the shipped prior does not know: 'big-x' succeeds on
    the long, hard prompts where 'small-x' fails; both succeed on short ones."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows: list[dict[str, object]] = []
    for i in range(n):
        hard = i % 3 == 0
        words = rng.choice(["apple", "river", "stone", "cloud", "lamp"], 40 if hard else 6)
        prompt = ("Prove that the integral converges: " if hard else "Name a fruit: ") + " ".join(
            words
        )
        big = float(rng.random() < (0.8 if hard else 0.95))
        small = float(rng.random() < (0.2 if hard else 0.9))
        model = {"cost_usd": None, "input_tokens": 50, "output_tokens": 50, "output_chars": 200}
        rows.append(
            {
                "id": f"syn:{i}",
                "source": "syn",
                "task": "hard" if hard else "easy",
                "prompt": prompt,
                "models": {"big-x": {"score": big, **model}, "small-x": {"score": small, **model}},
            }
        )
    data = tmp_path / "syn.jsonl"
    _write(data, rows)
    prices = {
        "big-x": {"input_usd_per_mtok": 10.0, "output_usd_per_mtok": 30.0, "source": "test"},
        "small-x": {"input_usd_per_mtok": 0.1, "output_usd_per_mtok": 0.3, "source": "test"},
    }
    (tmp_path / "syn.models.json").write_text(json.dumps(prices), encoding="utf-8")
    return data


def test_models_the_prior_does_not_know_are_evaluated_and_routed(tmp_path: Path) -> None:
    import numpy as np

    fd = labelled_files.FileData(_unknown_models_file(tmp_path))
    assert not set(fd.labels.models) & set(fd.est.skills)
    # the simulated policy routes them by the skill of their mean score, not one skill for all
    skills = fd.policy_skills
    assert skills["big-x"] > skills["small-x"] + 0.5
    for j, m in enumerate(fd.labels.models):
        mean_p = 1 / (1 + np.exp(-fd.est.discrimination * (skills[m] - fd.d)))
        assert abs(mean_p.mean() - fd.labels.scores[:, j].mean()) < 1e-6
    labs = labelled_files.bandit_labels(fd, np.arange(len(fd.rows)), np.random.default_rng(0))
    # big-x serves where the bar asks for it (a skill of 0 for both sent it only the 10%
    # exploration: 8% of the labels on this file)
    assert np.mean(["big-x" in lab for lab in labs]) > 0.25
    # the prior the learner starts from ranks prompts by difficulty for a model it does not
    # know (the IRT form, not a constant)
    train, rest = labelled_files.draw(fd, 60, 0)
    exs = curve_learner.training_examples(fd, train, "bandit", 0)
    start = curve_learner.prior_p(fd, train, exs, rest)
    for j in range(2):
        assert np.ptp(start[:, j]) > 1e-3 and abs(np.corrcoef(start[:, j], fd.d[rest])[0, 1]) > 0.99
    for regime in ("full", "bandit"):
        res = learning_curve.evaluate(fd, 60, regime, 0, tfidf=False)
        # a Brier score for the learner and for the prior it starts from, over every pair
        assert 0.0 < res["brier"]["learner"] < 0.5 and 0.0 < res["brier"]["prior"] < 0.5
    assert res["labels"] == 60


def test_the_policy_prior_starts_unknown_models_from_the_policy_s_skill(tmp_path: Path) -> None:
    """--policy-prior: a model the shipped prior does not know starts from the skill the
    bandit policy routes it by (as `effgate train --policy` starts it from the policy's
    skill:), not from its training labels; the default is unchanged."""
    import numpy as np

    from router_models.irt import irt_p

    data = _unknown_models_file(tmp_path, n=200)
    plain, pol = labelled_files.FileData(data), labelled_files.FileData(data, policy_prior=True)
    idx = np.arange(len(pol.rows))
    assert plain.prior_logit("big-x", idx) is None
    lg = pol.prior_logit("big-x", idx)
    assert lg is not None
    want = pol.est.discrimination * (pol.policy_skills["big-x"] - pol.d)
    assert np.allclose(lg, want)
    # the prior the learner starts from on a tiny bandit draw: the policy's IRT P
    train, rest = labelled_files.draw(pol, 12, 0)
    exs = curve_learner.training_examples(pol, train, "bandit", 0)
    start = curve_learner.prior_p(pol, train, exs, rest)
    j = list(pol.labels.models).index("big-x")
    p_pol = irt_p(pol.est.discrimination, pol.policy_skills["big-x"], pol.d[rest])
    assert np.allclose(start[:, j], p_pol, atol=1e-6)
    assert not np.allclose(curve_learner.prior_p(plain, train, exs, rest)[:, j], p_pol, atol=1e-3)
    # the command passes it on: the prior's Brier score is the policy skills' own
    args = ["--data", str(data), "--k", "60", "--regime", "bandit", "--no-tfidf", "--json"]
    runs = {}
    for flag in ([], ["--policy-prior"]):
        out = tmp_path / f"r{len(flag)}.json"
        assert learning_curve.main([*args, str(out), *flag]) == 0
        runs[bool(flag)] = json.loads(out.read_text(encoding="utf-8"))
        assert runs[bool(flag)]["policy_prior"] is bool(flag)
    _, rest = labelled_files.draw(pol, 60, 0)
    skills = np.array([pol.policy_skills[m] for m in pol.labels.models])
    p = irt_p(pol.est.discrimination, skills[None, :], pol.d[rest][:, None])
    mask = pol.labels.mask[rest]
    brier = float(((p - pol.labels.scores[rest]) ** 2)[mask].mean())
    assert runs[True]["runs"][0]["brier"]["prior"] == pytest.approx(brier, abs=1e-4)
    assert runs[False]["runs"][0]["brier"]["prior"] != pytest.approx(brier, abs=1e-3)


def test_a_file_without_prices_has_no_many_model_figure(tmp_path: Path) -> None:
    data = _unknown_models_file(tmp_path)
    (tmp_path / "syn.models.json").unlink()
    fd = labelled_files.FileData(data)
    res = learning_curve.evaluate(fd, 60, "full", 0, tfidf=False)
    assert res["many_cost_share"] == dict.fromkeys(("learner", "prior", "length", "random"))
    assert math.isfinite(res["pair"]["learner"]) and 0.0 < res["brier"]["learner"] < 0.5


def test_too_few_rest_rows_scoring_a_pair_give_nan_not_a_failure(tmp_path: Path) -> None:
    fd = labelled_files.FileData(_unknown_models_file(tmp_path))
    res = learning_curve.evaluate(fd, len(fd.rows) - 5, "full", 0, tfidf=False)
    assert all(math.isnan(res["pair"][k]) for k in ("learner", "prior", "length", "random"))
    assert res["pair_table_mean"] == {}
    assert "nan" in learning_curve.format_results([res])
