"""deploy/Dockerfile, parsed (no Docker daemon here: nothing is built; docs/operations.md says
how to build it and measure its size).

What must hold: a slim base, the serving install only (no extras) through the constraints
file, a non-root USER before the CMD, a HEALTHCHECK that needs no curl, one worker.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from dataclasses import dataclass

import pytest

from tests.deploy.queries import DEPLOY, ROOT


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str]:
        parsed = json.loads(self.args)
        assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed), self
        return parsed


def parse(text: str) -> list[Instruction]:
    """Instructions with their continuation lines joined; comments and blank lines dropped."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        keyword, _, args = " ".join(p for p in pending if p).partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return out


INSTRUCTIONS = parse((DEPLOY / "Dockerfile").read_text())


def only(keyword: str) -> Instruction:
    (found,) = [i for i in INSTRUCTIONS if i.keyword == keyword]
    return found


def all_of(keyword: str) -> list[Instruction]:
    return [i for i in INSTRUCTIONS if i.keyword == keyword]


def test_parser_joins_continuations_and_skips_comments() -> None:
    parsed = parse("# c\nFROM a\nRUN x \\\n  # inner\n  && y\n\nUSER 1\n")
    assert [(i.keyword, i.args, i.line) for i in parsed] == [
        ("FROM", "a", 2),
        ("RUN", "x && y", 3),
        ("USER", "1", 7),
    ]


def test_slim_base_single_stage() -> None:
    (base,) = all_of("FROM")
    assert base.args == "python:3.11-slim"


def test_serving_install_only_through_the_constraints() -> None:
    installs = [i for i in all_of("RUN") if "pip install" in i.args]
    assert len(installs) == 1
    command = installs[0].args.split("&&")
    (pip,) = [shlex.split(c) for c in command if "pip install" in c]
    args = pip[pip.index("install") + 1 :]
    assert args == [".", "-c", "requirements/constraints.txt"]
    # no extras: no effgate[train] / [report] / [all] / [dev], and not in any other spelling
    assert not any("[" in a for a in args)
    assert "-e" not in args and "--editable" not in args  # the source tree is removed after
    assert "rm -rf /src" in installs[0].args
    copied = {i.args.split()[0] for i in all_of("COPY")}
    assert "requirements/constraints.txt" in copied
    for source in copied:
        assert (ROOT / source).exists(), source


def test_runs_as_a_non_root_user() -> None:
    user = all_of("USER")
    assert user, "no USER: the container would run as root"
    uid, _, gid = user[-1].args.partition(":")
    assert uid.isdigit() and int(uid) >= 10000, "a numeric uid, so runAsNonRoot can verify it"
    assert gid.isdigit() and int(gid) != 0
    # the user is created with that uid, and USER comes after every RUN (nothing later as root)
    assert any(f"--uid {uid}" in i.args for i in all_of("RUN"))
    last_run = max(i.line for i in all_of("RUN"))
    assert user[-1].line > last_run
    cmd = only("CMD")
    assert user[-1].line < cmd.line


def test_healthcheck_asks_healthz_with_the_standard_library() -> None:
    check = only("HEALTHCHECK")
    options, _, rest = check.args.partition("CMD ")
    flags = dict(re.findall(r"--([a-z-]+)=(\S+)", options))
    assert set(flags) == {"interval", "timeout", "start-period", "retries"}
    argv = json.loads(rest)
    assert argv[:2] == ["python", "-c"], "no curl in python:3.11-slim"
    code = argv[2]
    ast.parse(code)  # valid Python
    assert "urllib.request.urlopen('http://127.0.0.1:8080/healthz'" in code
    assert "timeout=" in code
    # the port it asks is the one CMD serves on
    cmd = only("CMD").exec_form()
    assert cmd[cmd.index("--port") + 1] == "8080"
    assert only("EXPOSE").args == "8080"


def test_one_worker_and_the_why() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert only("CMD").exec_form() == ["effgate", "serve", "--host", "0.0.0.0", "--port", "8080"]
    assert "--workers" not in text
    assert "multiprocess mode" in text


@pytest.mark.parametrize("needle", ["docker build -f deploy/Dockerfile", "docker image ls"])
def test_the_size_command_is_in_the_header(needle: str) -> None:
    assert needle in (DEPLOY / "Dockerfile").read_text()
