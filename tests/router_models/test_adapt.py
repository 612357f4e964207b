"""`effgate train` adapting an artifact to labels (`router_models.adapt`): from gateway
records and labelled files, behind the held-out gate, with models the base does not know
and with a policy's skills as their prior."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest

from policies.replay import main as replay_main
from router_models import load_estimator
from router_models.evaluate import main as eval_main
from router_models.signature import signature
from router_models.train import main as train_main


def _judged_records(path: Path, n: int, seed: int, noise: bool = False) -> Path:
    """Records whose labels have a per-model structure no difficulty can express: "small"
    answers "alpha" prompts well and "beta" prompts badly, "big" the other way round.
    Half the requests carry a signature (no prompt), half a logged prompt; the judge grades
    both models, feedback the served one. ``noise``: labels are coin flips."""
    rng = np.random.default_rng(seed)
    lines: list[dict[str, object]] = []
    for i in range(n):
        kind = "alpha" if i % 2 else "beta"
        prompt = f"Please handle this {kind} request number {i} about topic {i % 13}."
        rid = f"req_{i}"
        served = "small" if i % 3 else "big"
        req: dict[str, object] = {"type": "request", "id": rid, "model": served, "status": 200}
        if i % 4 < 2:
            req["signature"] = signature([{"role": "user", "content": prompt}]).to_json()
        else:
            req["prompt"] = prompt
        lines.append(req)
        for model in ("small", "big"):
            good = (model == "small") == (kind == "alpha")
            p = 0.5 if noise else (0.9 if good else 0.1)
            score = float(rng.random() < p)
            lines.append({"type": "label", "request_id": rid, "model": model, "score": score})
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken\n", encoding="utf-8")
    return path


ALPHA = [{"role": "user", "content": "Please handle this alpha request number 999 about topic 1."}]
BETA = [{"role": "user", "content": "Please handle this beta request number 998 about topic 2."}]


def test_train_from_records_learns_per_model_heads_behind_the_gate(
    tmp_path, synth_artifact, capsys
):
    recs = _judged_records(tmp_path / "records.jsonl", 400, 1)
    out = tmp_path / "adapted"
    rc = train_main(["--records", str(recs), "--base", str(synth_artifact), "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "held-out comparison" in captured.out and "verdict: better" in captured.out
    assert "unreadable lines" in captured.err
    # progress on stderr, fold by fold, then the final fit (minutes each on big logs)
    folds = re.findall(r"held-out comparison: fold (\d) of (\d) done", captured.err)
    assert folds == [(str(k), "5") for k in range(1, 6)]
    assert "fitting the artifact's heads on all 400 examples" in captured.err
    base, new = load_estimator(synth_artifact), load_estimator(out)
    assert new.heads is not None and set(new.heads.models) == {"small", "big"}
    # the structure is recovered: which model wins depends on the prompt, not on difficulty
    assert (
        new.p_acceptable(ALPHA, model="small") > 0.7 > 0.3 > new.p_acceptable(BETA, model="small")
    )
    assert new.p_acceptable(BETA, model="big") > 0.7 > 0.3 > new.p_acceptable(ALPHA, model="big")
    # a model without a head keeps the prior's IRT link and skill
    assert new.p_acceptable(ALPHA, model="mid") == pytest.approx(
        base.p_acceptable(ALPHA, base.skills["mid"])
    )
    meta = new.metadata["adapted"]
    cmp = meta["comparison"]
    # both models are right half the time (no pair to route), so Brier decides
    assert cmp["better"] is True and cmp["mean_brier"]["new"] < cmp["mean_brier"]["base"] - 0.05
    assert meta["sources"]["records"]["labelled"] == 400 and meta["forced"] is False
    # what the fit chose is printed and kept: heads that beat the prior are not scaled back
    assert meta["chosen"]["beta"] == [1.0, 1.0] and meta["chosen"]["neighbours"] == 0
    assert "departure from the prior kept (held-out log loss): 100%" in captured.out
    assert new.weights.dense_coef.tolist() == base.weights.dense_coef.tolist()  # prior kept


def test_the_gate_refuses_a_worse_router_unless_forced(tmp_path, synth_artifact, capsys):
    recs = _judged_records(tmp_path / "records.jsonl", 300, 2, noise=True)
    out = tmp_path / "worse"
    # barely penalised heads overfit coin flips: worse than the prior on held-out labels
    overfit = ["--learner", "lam_shared=1e-6", "--learner", "lam_model=1e-6",
               "--learner", "lam_bias=1e-6"]  # fmt: skip
    args = ["--records", str(recs), "--base", str(synth_artifact), "--out", str(out), *overfit]
    assert train_main(args) == 3
    assert "NOT better" in capsys.readouterr().out and not out.exists()
    assert train_main([*args, "--force"]) == 0
    assert load_estimator(out).metadata["adapted"]["forced"] is True
    assert train_main([*args[:6], "--learner", "nope=1"]) == 1
    assert "--learner 'nope=1'" in capsys.readouterr().err


def _workflow_file(path: Path, per_task: int = 40, suffix: str = "") -> Path:
    """A shared-format file of six workflows, each its own template; in even ones "small"
    succeeds and "big" fails, in odd ones the other way round: which model wins is a
    property of the workflow, which no other workflow tells. ``suffix`` is added to both
    names (models the base does not know)."""
    rng = np.random.default_rng(4)
    topics = ["invoice", "weather", "poem", "contract", "recipe", "bugfix"]
    with path.open("w", encoding="utf-8") as fh:
        for t, topic in enumerate(topics):
            for i in range(per_task):
                prompt = f"Workflow {topic}: handle {topic} item {i} for customer {i % 7}."
                models = {}
                for m in ("small", "big"):
                    good = (m == "small") == (t % 2 == 0)
                    models[m + suffix] = {
                        "score": float(rng.random() < (0.9 if good else 0.1)),
                        "cost_usd": None,
                        "input_tokens": None,
                        "output_tokens": None,
                        "output_chars": 80,
                    }
                row = {"id": f"wf:{t}:{i}", "source": "wf", "task": topic, "prompt": prompt}
                fh.write(json.dumps({**row, "models": models}) + "\n")
    prices = {
        m + suffix: {"input_usd_per_mtok": a, "output_usd_per_mtok": b, "source": "test"}
        for m, (a, b) in {"small": (0.1, 0.2), "big": (5.0, 15.0)}.items()
    }
    path.with_name(path.stem + ".models.json").write_text(json.dumps(prices), encoding="utf-8")
    return path


def test_the_gate_groups_by_prompt_by_default_and_by_task_on_request(
    tmp_path, synth_artifact, capsys
):
    """The default asks whether the new router serves this traffic better (its workflows
    repeat; identical prompts share a fold); --group-by task asks whether it holds on
    workflows the labels do not have, which here it cannot."""
    data = _workflow_file(tmp_path / "wf.jsonl")
    base = ["--data", str(data), "--base", str(synth_artifact), "--folds", "3"]
    base += ["--learner", "calibrate=0"]  # the heads alone learn this; 6 fits, not 36
    assert train_main([*base, "--out", str(tmp_path / "by_prompt")]) == 0
    out = capsys.readouterr().out
    assert "grouped by prompt" in out and "verdict: better" in out
    by_prompt = load_estimator(tmp_path / "by_prompt").metadata["adapted"]["comparison"]
    assert by_prompt["group_by"] == "prompt"
    rc = train_main([*base, "--out", str(tmp_path / "by_task"), "--group-by", "task", "--force"])
    assert rc == 0 and "grouped by task" in capsys.readouterr().out
    by_task = load_estimator(tmp_path / "by_task").metadata["adapted"]["comparison"]
    assert by_task["group_by"] == "task" and by_task["grouped"] is True
    # held-out workflows: the new router has nothing to go on; held-out prompts: it learnt
    assert by_prompt["mean_brier"]["new"] < 0.15 < 0.25 < by_task["mean_brier"]["new"]
    with pytest.raises(SystemExit) as exc:
        train_main([*base, "--out", str(tmp_path / "x"), "--group-by", "tenant"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_models_the_base_does_not_know_are_compared_with_skills_from_their_labels(
    tmp_path, synth_artifact, capsys
):
    """The base knows neither model: each fold's base routes them by the IRT prior with a
    skill fitted to that fold's labels (as the written artifact gives them one), so the
    comparison has pairs and Brier scores and the adapted router can pass it."""
    data = _workflow_file(tmp_path / "wf.jsonl", suffix="-new")
    assert not {"small-new", "big-new"} & set(load_estimator(synth_artifact).skills)
    args = ["--data", str(data), "--base", str(synth_artifact), "--folds", "3"]
    args += ["--learner", "calibrate=0", "--out", str(tmp_path / "a")]
    assert train_main(args) == 0
    assert "verdict: better" in capsys.readouterr().out
    adapted = load_estimator(tmp_path / "a")
    report = adapted.metadata["adapted"]["comparison"]
    assert set(report["brier"]) == {"big-new", "small-new"}
    # the base has a P for both: its Brier is its labels' spread around their mean, about
    # 0.25 here (each model is right on half the workflows), the new router's far below
    assert 0.2 < report["mean_brier"]["base"] < 0.3
    assert report["mean_brier"]["new"] < 0.15
    assert {"small-new", "big-new"} <= set(adapted.skills)
    # effgate eval with that artifact reports its learned router beside the prior's
    ev = tmp_path / "eval.json"
    assert (
        eval_main(["--data", str(data), "--artifact", str(tmp_path / "a"), "--json", str(ev)]) == 0
    )
    pair = json.loads(ev.read_text())["pair"]["routers"]
    assert pair["learned"]["apgr"] > pair["estimator"]["apgr"] + 0.2  # in-sample: it saw them
    assert "learned" in json.loads(ev.read_text())["multi"]["routers"]
    assert (
        eval_main(["--data", str(data), "--artifact", str(synth_artifact), "--json", str(ev)]) == 0
    )
    assert "learned" not in json.loads(ev.read_text())["pair"]["routers"]  # no heads
    # effgate eval --policy with that artifact routes by its heads, as the gateway would
    policy = tmp_path / "p.yaml"
    model = "provider: openai, base_url: 'http://127.0.0.1:9/v1', context_window: 100000"
    prices = {"s": ("small-new", 0.1, 0.2), "b": ("big-new", 5.0, 15.0)}
    lines = ["version: 1", "models:"]
    for i, (up, a, b) in prices.items():
        lines.append(f"  - {{id: {i}, upstream_model: {up}, input_usd_per_mtok: {a},")
        lines.append(f"     output_usd_per_mtok: {b}, {model}}}")
    lines += ["routes:", "  - {name: auto, candidates: [s, b], quality_bar: 0.6}"]
    policy.write_text("\n".join([*lines, "default_route: auto", ""]), encoding="utf-8")
    out = tmp_path / "replay.json"
    argv = ["--policy", str(policy), "--data", str(data), "--json", str(out)]
    assert replay_main([*argv, "--artifact", str(tmp_path / "a")]) == 0
    rep = json.loads(out.read_text())
    assert rep["learned_heads"] == ["s", "b"] and rep["irt_models"] == []
    by = {x["strategy"]: x for x in rep["strategies"]}
    # each workflow's winner, which only the heads know: far above either model alone
    assert by["policy"]["quality"] > 0.8 > 0.6 > by["always s"]["quality"]
    assert by["always b"]["quality"] < 0.6


def _with_rare_model(data: Path, name: str, rows: int) -> None:
    """Label ``name`` as failing on the first ``rows`` rows of ``data`` (priced)."""
    lines = data.read_text(encoding="utf-8").splitlines()
    for i in range(rows):
        row = json.loads(lines[i])
        row["models"][name] = {**next(iter(row["models"].values())), "score": 0.0}
        lines[i] = json.dumps(row)
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    prices = data.with_name(data.stem + ".models.json")
    table = json.loads(prices.read_text(encoding="utf-8"))
    table[name] = {"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0, "source": "test"}
    prices.write_text(json.dumps(table), encoding="utf-8")


def test_a_policy_s_skills_are_the_prior_of_its_models(tmp_path, synth_artifact, capsys):
    """`effgate train --policy`: the skill: a policy gives a model is that model's prior,
    as the gateway routes it by that skill until it has a head, winning over the base's.
    The compared base and the new router start it there (a model with three labels stays
    near it, where without the policy it starts from the mean of its labels), and the
    written artifact keeps it for a labelled model, the base's skill for the others.
    Through `effgate`, which reads the policy with `policies`."""
    from gateway.cli import main as effgate
    from router_models.data import load_dataset
    from router_models.irt import irt_p
    from router_models.learner import examples_from_rows

    data = _workflow_file(tmp_path / "wf.jsonl", suffix="-new")
    _with_rare_model(data, "mid", 3)  # a model the base knows, labelled three times
    _with_rare_model(data, "rare-new", 3)  # and one it does not
    base = load_estimator(synth_artifact)
    assert {"mid", "small", "big"} <= set(base.skills)
    assert not {"small-new", "big-new"} & set(base.skills)
    policy = tmp_path / "p.yaml"
    model = "provider: openai, base_url: 'http://127.0.0.1:9/v1', context_window: 100000"
    policy.write_text(
        "version: 1\nmodels:\n"
        f"  - {{id: b, upstream_model: big-new, skill: 2.0, {model}}}\n"
        f"  - {{id: r, upstream_model: mid, skill: 3.0, {model}}}\n"
        f"  - {{id: sm, upstream_model: small, skill: -2.0, {model}}}\n"
        f"  - {{id: n, upstream_model: rare-new, skill: 3.0, {model}}}\n"
        f"  - {{id: s, upstream_model: small-new, {model}}}\n"
        "routes:\n  - {name: auto, candidates: [s, b]}\ndefault_route: auto\n",
        encoding="utf-8",
    )
    args = ["train", "--data", str(data), "--base", str(synth_artifact), "--folds", "3"]
    args += ["--learner", "calibrate=0", "--force"]
    assert effgate([*args, "--policy", str(policy), "--out", str(tmp_path / "a")]) == 0
    assert "the skill: it sets is the prior of 3 labelled model(s)" in capsys.readouterr().out
    adapted = load_estimator(tmp_path / "a")
    meta = adapted.metadata["adapted"]["policy"]
    assert meta["file"] == "p.yaml"
    assert meta["skills"] == {"big-new": 2.0, "mid": 3.0, "rare-new": 3.0}
    # labelled: the policy's skill, over the base's for mid; small-new (no skill: in the
    # policy) fitted to its labels; unlabelled: the base's, whatever the policy says
    assert adapted.skills["big-new"] == 2.0 and adapted.skills["mid"] == 3.0
    assert "small-new" in adapted.skills
    assert adapted.skills["small"] == base.skills["small"]
    assert adapted.skills["big"] == base.skills["big"]
    assert not {"b", "r", "sm", "s", "n"} & set(adapted.skills)
    # the compared base routes big-new by the policy's skill, on every held-out label
    exs = examples_from_rows(load_dataset([data]).rows)
    d = np.array([base.difficulty_of_dense(e.sig.dense) for e in exs])
    y = np.array([e.labels["big-new"] for e in exs])
    want = float(np.mean((irt_p(base.discrimination, 2.0, d) - y) ** 2))
    report = adapted.metadata["adapted"]["comparison"]
    assert report["brier"]["big-new"]["base"] == pytest.approx(want, abs=1e-4)
    # rare-new failed its three prompts: the new router, started from the policy's skill,
    # still gives it a high P there (a large held-out Brier score; from its labels' mean,
    # (0 + 1) / (3 + 2), it would be small) ...
    assert report["brier"]["rare-new"]["new"] > 0.5, report["brier"]["rare-new"]
    # ... and so do the written heads: three failures move P only a little from it
    rare = [e for e in exs if "mid" in e.labels]
    dr = np.array([base.difficulty_of_dense(e.sig.dense) for e in rare])
    assert adapted.heads is not None
    k = adapted.heads.index("mid")
    p_policy = adapted.heads.p_many([e.sig for e in rare], dr)[:, k]
    prior = irt_p(base.discrimination, 3.0, dr)
    assert float(np.abs(p_policy - prior).max()) < 0.15 and float(p_policy.min()) > 0.6
    # without the policy mid starts from the base's skill, and its failures take it below
    assert effgate([*args, "--out", str(tmp_path / "b")]) == 0
    plain = load_estimator(tmp_path / "b")
    assert "policy" not in plain.metadata["adapted"]
    assert plain.skills["mid"] == base.skills["mid"]
    assert plain.heads is not None
    k = plain.heads.index("mid")
    p_plain = plain.heads.p_many([e.sig for e in rare], dr)[:, k]
    p_base = irt_p(base.discrimination, base.skills["mid"], dr)
    assert float((p_base - p_plain).min()) > 0.0
    assert float((p_policy - p_plain).min()) > 0.2, (p_policy, p_plain)
    # a policy that sets no skill for a labelled model says so
    bare = tmp_path / "bare.yaml"
    bare.write_text(re.sub(r"skill: [-0-9.]+, ", "", policy.read_text(encoding="utf-8")))
    assert effgate([*args, "--policy", str(bare), "--out", str(tmp_path / "d")]) == 0
    assert "sets no skill: for any labelled model" in capsys.readouterr().out
    assert load_estimator(tmp_path / "d").metadata["adapted"]["policy"]["skills"] == {}
    # a policy that is not one is an error naming it; --policy is for adapting only
    policy.write_text("version: 3\n", encoding="utf-8")
    assert effgate([*args, "--policy", str(policy), "--out", str(tmp_path / "c")]) == 1
    assert f"effgate train: {policy}:1" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
    argv = ["train", "--data", str(data), "--policy", str(policy), "--out", str(tmp_path / "c")]
    assert effgate(argv) == 2 and "--policy is for adapting" in capsys.readouterr().err
    # router_models alone cannot read a policy (it does not import policies)
    argv = ["--data", str(data), "--base", str(synth_artifact), "--policy", str(policy)]
    assert train_main([*argv, "--out", str(tmp_path / "c")]) == 2
    assert "run `effgate train`" in capsys.readouterr().err


def test_fitted_skills_match_the_smoothed_mean_on_the_labelled_prompts(synth_artifact) -> None:
    from router_models.adapt import fitted_skills
    from router_models.learner import Example
    from router_models.routing import skill_from_mean

    base = load_estimator(synth_artifact)
    texts = [f"Question {i}: " + "combine 7 " * (i % 9) for i in range(60)]
    sigs = [signature([{"role": "user", "content": t}]) for t in texts]
    d = np.array([base.difficulty_of_dense(s.dense) for s in sigs])
    hard = d > np.median(d)
    # "new" labelled on the harder half only, all 1s; "big" is known to the base
    exs = [
        Example(sig, {"new": 1.0, "big": 0.0} if h else {"big": 1.0})
        for sig, h in zip(sigs, hard, strict=True)
    ]
    skills = fitted_skills(base, ["new", "big", "absent"], exs)
    assert set(skills) == {"new"}  # known to the base, or with no label: none
    n = int(hard.sum())
    want = skill_from_mean(d[hard], base.discrimination, (n + 1) / (n + 2))
    assert skills["new"] == pytest.approx(want)
    # the prompts it was labelled on, not all of them
    assert skills["new"] != pytest.approx(
        skill_from_mean(d, base.discrimination, (n + 1) / (n + 2))
    )


def test_regroup() -> None:
    from router_models.adapt import regroup
    from router_models.learner import Example

    sig = signature([{"role": "user", "content": "hi"}])
    exs = [Example(sig=sig, labels={"a": 1.0}, group="t1", tag=""),
           Example(sig=sig, labels={"a": 0.0}, group=sig.digest, tag="summarise")]  # fmt: skip
    assert [e.group for e in regroup(exs, "prompt")] == [sig.digest, sig.digest]
    assert [e.group for e in regroup(exs, "task")] == ["t1", "summarise"]
    bare = Example(sig=signature([{"role": "user", "content": "hi"}], digest=False), labels={})
    assert regroup([dataclasses.replace(bare, group="g")], "prompt")[0].group == "g"
    with pytest.raises(ValueError, match="group by"):
        regroup(exs, "tenant")  # type: ignore[arg-type]


def test_max_examples_trains_on_the_newest_records(tmp_path, synth_artifact, capsys):
    recs = _judged_records(tmp_path / "records.jsonl", 400, 1)
    out = tmp_path / "adapted"
    argv = ["--records", str(recs), "--base", str(synth_artifact), "--out", str(out)]
    assert train_main([*argv, "--max-examples", "300"]) == 0
    err = capsys.readouterr().err
    assert "records: 400 labelled requests" in err
    assert "training on the newest 300 labelled requests; 100 older ones left out" in err
    meta = load_estimator(out).metadata["adapted"]
    assert meta["examples"] == 300 and meta["sources"]["records"]["beyond_cap"] == 100
    assert train_main([*argv, "--max-examples", "-1"]) == 2
    assert "--max-examples is 0 (keep all) or more" in capsys.readouterr().err
