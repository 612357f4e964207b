"""Every `effgate ...` command line in the README's and docs/operations.md's shell blocks
parses: its subcommand exists and takes every flag shown (what a new user copies)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from gateway import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "docs/operations.md")


def _shell_blocks(text: str) -> list[str]:
    """The bodies of the fenced blocks marked bash, sh or console."""
    blocks: list[str] = []
    body: list[str] = []
    lang: str | None = None
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if lang is None:
                lang = line.strip()[3:].strip()
                body = []
            else:
                if lang in ("bash", "sh", "console"):
                    blocks.append("\n".join(body))
                lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def _commands() -> list[tuple[str, list[str]]]:
    found = []
    for doc in DOCS:
        for block in _shell_blocks((ROOT / doc).read_text(encoding="utf-8")):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.strip().removeprefix("$ ")
                if line.startswith("effgate "):
                    argv = shlex.split(line, comments=True)
                    if not any(a in ("|", "&&", ";", "&") for a in argv):
                        found.append((f"{doc}: {line[:60]}", argv))
    return found


COMMANDS = _commands()


def test_the_docs_show_commands() -> None:
    shown = {argv[1] for _, argv in COMMANDS}
    assert {"serve", "train", "eval", "report", "records", "policy"} <= shown, shown


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_each_command_line_parses(
    where: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # argparse lists every unrecognised argument; a sentinel makes it stop before running
    status: object
    try:  # argparse exits; a command that catches it returns the status instead
        status = cli.main([*argv[1:], "--not-a-real-flag"])
    except SystemExit as exc:
        status = exc.code
    assert status == 2, where
    err = capsys.readouterr().err
    assert err.rstrip().endswith("error: unrecognized arguments: --not-a-real-flag"), (where, err)
