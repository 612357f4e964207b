"""Dependencies by role: serving never imports the offline extras, and a command that needs a
missing extra says what to install (exit 2, no traceback).

A missing package is simulated at the import system's seam, not by patching our code: the
command runs in a fresh interpreter whose PYTHONPATH starts with a folder holding a package
of that name that raises ModuleNotFoundError when imported, as an absent one would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.gateway.report.fixtures import tiny_log

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = ("sklearn", "matplotlib", "tqdm", "scipy")
REPORT = "pip install 'effgate[report]'"
TRAIN = "pip install 'effgate[train]'"

SERVE = f"""
import sys
import gateway.app, gateway.cli.serve
from starlette.testclient import TestClient
from gateway.settings import Settings

app = gateway.app.create_app(Settings(records_dir=None))
with TestClient(app) as client:  # the lifespan loads the policy and the shipped estimator
    assert client.get("/readyz").status_code == 200
    assert client.get("/v1/models").status_code == 200
print(",".join(m for m in {OFFLINE!r} if m in sys.modules))
"""


def hide(tmp_path: Path, *modules: str) -> Path:
    """A folder that, first on PYTHONPATH, makes `import <module>` fail like a missing one."""
    folder = tmp_path / "hidden"
    for module in modules:
        (folder / module).mkdir(parents=True)
        (folder / module / "__init__.py").write_text(
            f"raise ModuleNotFoundError({f'No module named {module!r}'!r}, name={module!r})\n"
        )
    return folder


def python(*args: str, hidden: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    path = [str(ROOT), env.get("PYTHONPATH", "")]
    if hidden is not None:
        path.insert(0, str(hidden))
    env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def effgate(*args: str, hidden: Path) -> subprocess.CompletedProcess[str]:
    return python("-m", "gateway.cli", *args, hidden=hidden)


def test_serving_imports_none_of_the_offline_extras() -> None:
    done = python("-c", SERVE)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_serving_runs_with_the_offline_extras_missing(tmp_path: Path) -> None:
    done = python("-c", SERVE, hidden=hide(tmp_path, *OFFLINE))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_the_hidden_package_really_is_missing(tmp_path: Path) -> None:
    done = python("-c", "import matplotlib", hidden=hide(tmp_path, "matplotlib"))
    assert done.returncode == 1 and "ModuleNotFoundError: No module named 'matplotlib'" in (
        done.stderr
    )


def assert_says(done: subprocess.CompletedProcess[str], message: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


@pytest.fixture
def records(tmp_path: Path) -> Path:
    path = tmp_path / "records.jsonl"
    path.write_bytes(tiny_log())
    return path


def test_report_html_without_matplotlib_says_what_to_install(tmp_path: Path, records: Path) -> None:
    out = tmp_path / "out"
    done = effgate(
        "report", "--records", str(records), "--out", str(out), hidden=hide(tmp_path, "matplotlib")
    )
    assert_says(done, f"effgate report: the plots need matplotlib: {REPORT}")
    assert "--format json" in done.stderr
    assert not out.exists()  # checked before any work


def test_report_json_needs_no_matplotlib(tmp_path: Path, records: Path) -> None:
    out = tmp_path / "out"
    hidden = hide(tmp_path, "matplotlib")
    done = effgate(
        "report", "--records", str(records), "--out", str(out), "--format", "json", hidden=hidden
    )
    assert done.returncode == 0, done.stderr
    assert orjson.loads((out / "report.json").read_bytes())["overall"]["requests"] == 5
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]


@pytest.mark.parametrize(
    "missing,message",
    [
        ("sklearn", f"effgate train: training needs scikit-learn: {TRAIN}"),
        ("tqdm", f"effgate train: training needs tqdm: {TRAIN}"),
    ],
)
def test_train_without_its_extra_says_what_to_install(
    tmp_path: Path, missing: str, message: str
) -> None:
    # the data file does not exist: the extra is checked before any data is read
    args = ["train", "--data", str(tmp_path / "absent.jsonl"), "--out", str(tmp_path / "a")]
    assert_says(effgate(*args, hidden=hide(tmp_path, missing)), message)


def test_train_from_records_without_scipy_says_what_to_install(tmp_path: Path) -> None:
    # the learner fits with scipy; the records path does not exist: checked before reading
    args = ["train", "--records", str(tmp_path / "absent"), "--out", str(tmp_path / "a")]
    done = effgate(*args, hidden=hide(tmp_path, "scipy"))
    assert_says(done, f"effgate train: training needs scipy: {TRAIN}")


def test_eval_plot_without_matplotlib_says_what_to_install(tmp_path: Path) -> None:
    args = ["eval", "--data", str(tmp_path / "absent.jsonl"), "--plot", str(tmp_path / "p.png")]
    done = effgate(*args, hidden=hide(tmp_path, "matplotlib"))
    assert_says(done, f"effgate eval: --plot needs matplotlib: {REPORT}")


def test_select_without_sklearn_says_what_to_install(tmp_path: Path) -> None:
    args = ["-m", "router_models", "select", "--data", str(tmp_path / "absent.jsonl")]
    done = python(*args, hidden=hide(tmp_path, "sklearn"))
    assert_says(done, f"select: training needs scikit-learn: {TRAIN}")
