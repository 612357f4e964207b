"""`python -m router_models train|eval ...`: the same mains `effgate train|eval` dispatch to."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("train", "eval"):
        print("usage: python -m router_models {train,eval} ...", file=sys.stderr)
        return 2
    if argv[0] == "train":
        from router_models.train import main as train_main

        return train_main(argv[1:])
    from router_models.evaluate import main as eval_main

    return eval_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
