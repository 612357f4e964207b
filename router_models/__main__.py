"""`python -m router_models train|eval|select|ceilings ...`: train and eval are the mains
`effgate train|eval` dispatch to; select is the leave-task-out recipe comparison; ceilings
scores routers built from the evaluated file's own labels (what no estimator can beat)."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("train", "eval", "select", "ceilings"):
        print("usage: python -m router_models {train,eval,select,ceilings} ...", file=sys.stderr)
        return 2
    if argv[0] == "ceilings":
        from router_models.ceilings import main as ceilings_main

        return ceilings_main(argv[1:])
    if argv[0] == "select":
        from router_models.selection import main as select_main

        return select_main(argv[1:])
    if argv[0] == "train":
        from router_models.train import main as train_main

        return train_main(argv[1:])
    from router_models.evaluate import main as eval_main

    return eval_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
