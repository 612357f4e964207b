from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from router_models.gate import compare, format_comparison
from router_models.learner import Example
from router_models.signature import signature

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon"]


def _examples(n: int = 300) -> list[Example]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        hard = rng.random() < 0.5
        text = " ".join(rng.choice(WORDS, 8)) + (" hard" if hard else " easy")
        strong = 1.0 if rng.random() < 0.9 else 0.0
        weak = 0.0 if hard else (1.0 if rng.random() < 0.9 else 0.0)
        out.append(
            Example(
                signature([{"role": "user", "content": text}]),
                {"S": strong, "W": weak},
                f"t{i % 7}",
            )
        )
    return out


def _oracle(exs: Sequence[Example]) -> dict[str, np.ndarray]:
    # knows where the weak model fails (reads the labels: a ceiling, for the test only)
    h = np.array([e.labels.get("W", 1.0) == 0.0 for e in exs], dtype=float)
    return {"S": np.full(len(exs), 0.9), "W": 0.9 - 0.8 * h}


def _constant(exs: Sequence[Example]) -> dict[str, np.ndarray]:
    return {"S": np.full(len(exs), 0.9), "W": np.full(len(exs), 0.45)}


def _inverted(exs: Sequence[Example]) -> dict[str, np.ndarray]:
    p = _oracle(exs)
    return {"S": p["S"], "W": 0.9 - p["W"] + 0.1}


def test_worse_scorer_is_not_better() -> None:
    exs = _examples()
    rep = compare(exs, lambda train: _inverted, _oracle, folds=5, prices={"S": 10.0, "W": 1.0})
    assert rep["better"] is False
    assert rep["grouped"] and rep["pairs"] and rep["pairs"][0]["strong"] == "S"
    assert rep["mean_pair_apgr"]["new"] < rep["mean_pair_apgr"]["base"]
    json.dumps(rep)
    assert "NOT better" in format_comparison(rep) and "(grouped)" in format_comparison(rep)
    assert "(grouped by task)" in format_comparison({**rep, "group_by": "task"})
    assert "(per example)" in format_comparison({**rep, "grouped": False})


def test_same_or_better_scorer_is_better() -> None:
    exs = _examples()
    rep = compare(exs, lambda train: _oracle, _constant, folds=3, prices={"S": 10.0, "W": 1.0})
    assert rep["better"] is True
    assert rep["many"] is not None and rep["many"]["new"] is not None
    assert "better" in format_comparison(rep)


def test_a_base_fitted_per_fold_sees_only_that_folds_training_examples() -> None:
    exs = _examples()
    seen: list[set[int]] = []

    def fit_base(train: Sequence[Example]):
        ids = {id(e) for e in train}
        seen.append(ids)

        def score(test: Sequence[Example]) -> dict[str, np.ndarray]:
            assert not ids & {id(e) for e in test}  # never scores what it was made from
            return _constant(test)

        return score

    rep = compare(exs, lambda train: _oracle, _inverted, folds=4, fit_base=fit_base)
    assert len(seen) == 4 and sum(len(s) for s in seen) == 3 * len(exs)
    # the per-fold base replaced `base` (_inverted): the base's figures are _constant's
    ref = compare(exs, lambda train: _oracle, _constant, folds=4)
    assert rep["mean_brier"] == ref["mean_brier"] and rep["pairs"] == ref["pairs"]


def test_many_models_leaves_out_a_priced_model_that_labels_few_examples() -> None:
    # "R" is priced but labels one example in ten (a model shadow evaluation rarely sends
    # to): requiring every priced model would leave 30 of 300 examples; without it, S and W
    # label all 300, and the many-model block is computed on them
    exs = [
        Example(e.sig, {**e.labels, **({"R": 1.0} if i % 10 == 0 else {})}, e.group)
        for i, e in enumerate(_examples())
    ]

    def oracle3(test: Sequence[Example]) -> dict[str, np.ndarray]:
        return {**_oracle(test), "R": np.full(len(test), 0.5)}

    rep = compare(
        exs, lambda train: oracle3, oracle3, folds=3, prices={"S": 10.0, "W": 1.0, "R": 5.0}
    )
    many = rep["many"]
    assert many["models"] == ["S", "W"] and many["rows"] == 300
    assert many["new"] is not None and many["new"] < 1.0
    assert "2 priced, 300 examples labelling all" in format_comparison(rep)
