"""The LiteLLM proxy as a peer: its own virtualenv, a config pointing at our fakes, no network.

The proxy lives in ``benchmarks/.venv-litellm`` (gitignored), created on first use with
``python -m venv`` and ``pip install 'litellm[proxy]'`` and reused after, so its pins never meet
ours. It runs offline: the bundled model cost map instead of a download, telemetry off.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

VENV = Path(__file__).resolve().parent / ".venv-litellm"
REQUIREMENT = "litellm[proxy]"

ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the cost map at import
    "LITELLM_TELEMETRY": "False",
    "LITELLM_LOG": "ERROR",
    "LITELLM_MODE": "PRODUCTION",  # do not read a .env file from the working directory
    "DISABLE_SCHEMA_UPDATE": "True",
    "NO_DOCS": "True",
    "NO_REDOC": "True",
}


def binary(venv: Path = VENV) -> Path:
    return venv / "bin" / "litellm"


def ensure_venv(venv: Path = VENV, *, log: Path) -> Path:
    """The ``litellm`` command of ``venv``, creating and installing it when missing.

    Reuses an existing install whose proxy imports; raises ``RuntimeError`` with the pip log
    tail when the install fails.
    """
    exe = binary(venv)
    python = venv / "bin" / "python"
    if exe.exists() and _imports_proxy(python):
        return exe
    with log.open("ab") as fh:
        print(
            f"installing {REQUIREMENT} into {venv} (first run only; takes minutes)...",
            file=sys.stderr,
            flush=True,
        )
        steps = [
            [sys.executable, "-m", "venv", str(venv)],
            [str(python), "-m", "pip", "install", "--quiet", REQUIREMENT],
        ]
        for cmd in steps:
            code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
            if code != 0:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                raise RuntimeError(f"{' '.join(cmd)} failed with code {code}:\n{tail}")
    if not exe.exists() or not _imports_proxy(python):
        raise RuntimeError(f"{venv}: litellm installed but its proxy does not import; see {log}")
    return exe


def _imports_proxy(python: Path) -> bool:
    if not python.exists():
        return False
    probe = "import importlib.util as u, sys; sys.exit(u.find_spec('litellm.proxy') is None)"
    return (
        subprocess.call(
            [str(python), "-c", probe], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        == 0
    )


def version(venv: Path = VENV) -> str:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "show", "litellm"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    for line in out.splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def command(exe: Path, config: Path, port: int) -> list[str]:
    return [
        str(exe),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
