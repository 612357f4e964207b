"""The ``effgate`` command: dispatches to ``main(argv)`` functions next to the code they run.

Each branch imports its command lazily, so ``effgate policy check`` never loads the server and
``effgate serve`` never loads training or reporting code. ``serve`` and ``demo`` live here;
the others are ``policies.check``, ``router_models.train``, ``router_models.evaluate``,
``policies.replay``, ``gateway.report.build``, ``gateway.records_export`` and ``fake_upstream``.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

USAGE = """usage: effgate <command> [options]

commands:
  demo            run the gateway in front of two fake models (no provider key needed)
  serve           run the gateway (effgate serve --policy FILE --host H --port P)
  fake-upstream   run an OpenAI-compatible fake model server (tests, benchmarks, demo)
  policy check    validate policy files offline
  keys            tenants' keys: new --tenant T (print a key once), hash, check FILE
  train           train a difficulty estimator (--data FILE.jsonl | --records PATH),
                  or adapt one to labels (--records PATH | --data F --base DIR) [--policy FILE]
  eval            evaluate an estimator (--data), or replay a policy (--policy --data)
  report          efficiency report from request records (--records PATH --out DIR)
  records export  append the Redis record stream to a JSON Lines file (--out FILE.jsonl)

run `effgate <command> --help` for a command's options
"""


def _command(argv: list[str]) -> tuple[Callable[[list[str]], int], list[str]] | None:
    cmd, rest = argv[0], argv[1:]
    if cmd == "serve":
        from gateway.cli.serve import main as serve

        return serve, rest
    if cmd == "demo":
        from gateway.cli.demo import main as demo

        return demo, rest
    if cmd == "fake-upstream":
        from fake_upstream import main as fake

        return fake, rest
    if cmd == "policy" and rest[:1] == ["check"]:
        from policies.check import main as check

        return check, rest[1:]
    if cmd == "keys":
        from gateway.tenants import main as keys

        return keys, rest
    if cmd == "train":
        from policies.loader import configured_skills
        from router_models.train import main as train

        return functools.partial(train, policy_skills=configured_skills), rest
    if cmd == "eval":
        if "--policy" in rest or any(a.startswith("--policy=") for a in rest):
            from policies.replay import main as replay

            return replay, rest
        from router_models.evaluate import main as evaluate

        return evaluate, rest
    if cmd == "records" and rest[:1] == ["export"]:
        from gateway.records_export import main as export

        return export, rest[1:]
    if cmd == "report":
        from gateway.report.build import main as report

        return report, rest
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    found = _command(argv)
    if found is None:
        print(f"effgate: unknown command {' '.join(argv[:2])!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    func, rest = found
    return func(rest)
