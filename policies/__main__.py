"""``python -m policies check FILE...`` and ``python -m policies eval ...``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = "usage: python -m policies {check FILE... | eval --policy F --data F.jsonl ...}"


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to ``policies.check.main`` or ``policies.replay.main``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "check":
        from policies.check import main as check

        return check(args[1:])
    if args and args[0] == "eval":
        from policies.replay import main as replay

        return replay(args[1:])
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
