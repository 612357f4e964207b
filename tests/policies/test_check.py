"""``effgate policy check`` / ``python -m policies check``: output and exit codes."""

from __future__ import annotations

import hashlib
import runpy
import sys

import pytest

from policies.__main__ import main as module_main
from policies.check import EstimatorUnavailable, estimator_skills, main
from tests.policies.conftest import MINIMAL, THREE


def fixed_skills(artifact: str | None) -> tuple[dict[str, float], float]:
    return {"mock-small": 0.1, "mock-big": 1.0}, 1.5


def unavailable(artifact: str | None) -> tuple[dict[str, float], float]:
    raise EstimatorUnavailable("router_models is not importable (test)")


def test_valid_files_print_ok_and_exit_zero(write, capsys):
    a, b = write(MINIMAL, "a.yaml"), write(THREE, "b.yaml")
    assert main([str(a), str(b)], skill_source=fixed_skills) == 0
    out = capsys.readouterr().out.splitlines()
    sha = hashlib.sha256(MINIMAL.encode()).hexdigest()
    assert out == [
        f"OK {a} (2 models, 1 routes, sha256 {sha})",
        f"OK {b} (3 models, 2 routes, sha256 {hashlib.sha256(THREE.encode()).hexdigest()})",
    ]


def test_any_bad_file_exits_one_with_located_errors(write, capsys):
    good = write(MINIMAL, "good.yaml")
    bad = write(
        MINIMAL.replace("output_usd_per_mtok: 0.60", "output_usd_per_mtok: cheap"), "bad.yaml"
    )
    missing = good.parent / "missing.yaml"
    assert main([str(good), str(bad), str(missing)], skill_source=fixed_skills) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(f"OK {good} ")
    assert captured.err.splitlines() == [
        f"{bad}:3: models[0].output_usd_per_mtok: Input should be a valid number",
        f"{missing}:1: cannot read: No such file or directory",
        "2 of 3 policy files failed",
    ]


def test_estimator_skills_are_used(write, capsys):
    with_bar = MINIMAL.replace(
        "candidates: [small, big]", "candidates: [small, big]\n    quality_bar: 0.8"
    )
    path = write(with_bar)
    assert main([str(path)], skill_source=fixed_skills) == 0  # skills found by upstream_model
    assert main([str(path)], skill_source=unavailable) == 1  # ... and required without them
    err = capsys.readouterr().err
    assert "note: router_models is not importable (test); checking without fitted skills" in err
    assert "models[0].skill: model 'small' has no skill" in err


def test_an_explicit_artifact_that_fails_is_an_error(write, capsys, tmp_path):
    path = write(MINIMAL)
    assert main([str(path), "--artifact", str(tmp_path / "nope")], skill_source=unavailable) == 1
    assert capsys.readouterr().err.startswith("error: router_models is not importable (test)")
    # the real loader on an empty directory
    assert main([str(path), "--artifact", str(tmp_path)]) == 1
    assert "no usable estimator artifact" in capsys.readouterr().err


def test_estimator_skills_without_router_models(monkeypatch):
    monkeypatch.setitem(sys.modules, "router_models", None)  # as if it were not installed
    with pytest.raises(EstimatorUnavailable, match="not importable"):
        estimator_skills()


def test_estimator_skills_from_the_shipped_artifact():
    skills, discrimination = estimator_skills()
    assert skills and all(isinstance(v, float) for v in skills.values())
    assert discrimination > 0


def test_usage_requires_files(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


def test_python_dash_m_policies(write, capsys, monkeypatch):
    path = write(MINIMAL)
    assert module_main(["check", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"OK {path} ")
    assert module_main([]) == 2
    assert module_main(["frobnicate"]) == 2
    assert capsys.readouterr().err.startswith("usage: python -m policies")
    monkeypatch.setattr(sys, "argv", ["python -m policies", "check", str(path)])
    monkeypatch.delitem(sys.modules, "policies.__main__")  # run it fresh, as `python -m` does
    with pytest.raises(SystemExit) as info:
        runpy.run_module("policies", run_name="__main__")
    assert info.value.code == 0 and capsys.readouterr().out.startswith(f"OK {path} ")
