"""The CPU-clock profile wrapper around ``effgate serve``, and its summary."""

from __future__ import annotations

from pathlib import Path

import pytest

import gateway.app  # noqa: F401  (imported here, unprofiled: profiling the import is slow)
from benchmarks.profile_gateway import main, profile_serve, summary


def test_profile_is_written_even_when_serve_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gw.prof"
    code = profile_serve(out, ["--policy", str(tmp_path / "missing.yaml"), "--port", "0"])
    assert code == 2  # effgate serve: policy file not found
    text = summary(out, limit=5)
    assert "Ordered by: cumulative time" in text
    assert "Ordered by: internal time" in text
    assert "serve.py" in text
    capsys.readouterr()
    assert main(["--show", str(out), "--limit", "3"]) == 0
    assert "function calls" in capsys.readouterr().out
    assert main([]) == 2
