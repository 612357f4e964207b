"""promtool: the Prometheus config and rule files are valid, and the alert unit tests pass.

promtool is installed by CI (.ci/run); a missing binary fails these tests instead of skipping
them, so a CI image without it cannot pass silently.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.deploy.queries import DEPLOY

PROMETHEUS_DIR = DEPLOY / "prometheus"
pytestmark = pytest.mark.prometheus


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(
            "promtool not found on PATH: install Prometheus (Debian: apt-get install prometheus)"
        )
    return subprocess.run(
        [binary, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60
    )


def test_promtool_check_config() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rule files found" in result.stdout


@pytest.mark.parametrize("name", ["alerts.yml", "recording.yml"])
def test_promtool_check_rules(name: str) -> None:
    result = promtool("check", "rules", name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_cover_the_key_alerts() -> None:
    text = (PROMETHEUS_DIR / "alerts_test.yml").read_text()
    for alert in ["EffgateHighErrorRate", "EffgateBudgetBurn", "EffgateNoTraffic"]:
        # each is tested both firing and not firing
        assert f"alertname: {alert}\n        exp_alerts: []" in text, alert
        assert f"alertname: {alert}\n        exp_alerts:\n          - exp_labels:" in text, alert


def test_broken_rule_is_rejected(tmp_path) -> None:
    # the check is able to fail: a rule with a PromQL syntax error
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(rate(x[5m])\n"
    )
    result = promtool("check", "rules", str(bad))
    assert result.returncode != 0
