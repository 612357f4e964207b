"""Where the gateway's time goes: py-spy's collapsed stacks summed into the request's stages.

    py-spy record --pid PID --duration 20 --rate 250 --format raw -o stacks.txt
    python -m benchmarks.stacks stacks.txt [--top 25]

Each sample is charged to the innermost frame that names a stage of the request handler
(``HANDLER``), else to the innermost framework stage (``FRAMEWORK``), so a stage's share
excludes the stages nested in it: ``route_input`` does not include the estimator it calls.
Samples of threads blocked on a lock are left out (py-spy counts them as busy). The top
functions by inclusive share follow.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

# (label, substring of a py-spy frame "function (file:line)"). Our request path first: the
# innermost of these in a stack wins; only stacks with none of them go to the framework stages.
HANDLER: tuple[tuple[str, str], ...] = (
    ("estimator: difficulty()", "Estimator.difficulty"),
    ("policy: decide()", "decide (policies/engine.py"),
    ("prompt_text()", "prompt_text ("),
    ("token estimate", "TokenCounter."),
    ("route_input (rest)", "route_input ("),
    ("reply JSON: parse, usage, price, re-encode", "_json_reply ("),
    ("upstream call: httpx + httpcore", "HttpxUpstream.complete"),
    ("upstream call: httpx + httpcore", "HttpxUpstream.open_stream"),
    ("upstream stream read: httpx + httpcore", "_HTTPStream.chunks"),
    ("upstream call: aiohttp", "AiohttpUpstream.complete"),
    ("upstream call: aiohttp", "AiohttpUpstream.open_stream"),
    ("upstream stream read: aiohttp", "_AiohttpStream.chunks"),
    ("stream relay: SSE split, usage, send", "RelayResponse."),
    ("accounting: metrics, record", "Accountant.finish"),
    ("request validation: pydantic", "validate (gateway/pipeline.py"),
    ("forward (rest): retries, fallbacks", "forward (gateway/forward.py"),
    ("request body: read + orjson", "read_json (gateway/lifecycle.py"),
    ("auth: authenticate", "authenticate (gateway/lifecycle.py"),
    ("disconnect watch", "until_disconnect ("),
    ("lifecycle (rest): serve, respond", "(gateway/lifecycle.py"),
)
FRAMEWORK: tuple[tuple[str, str], ...] = (
    ("uvicorn: response write", "RequestResponseCycle.send"),
    ("effgate edge: dispatch, headers", "(gateway/edge.py"),
    ("ASGI frameworks", "(fastapi/"),
    ("ASGI frameworks", "(starlette/"),
    ("ASGI frameworks", "RequestResponseCycle.run_asgi"),
    ("ASGI frameworks", "ProxyHeadersMiddleware"),
    ("uvicorn: HTTP parsing", "httptools_impl.py"),
    ("record writer (async side)", "RecordLog."),
    ("other threads: the record file writer", "Thread._bootstrap"),
)
STAGES = HANDLER + FRAMEWORK
# a thread blocked in one of these is waiting, not working (py-spy's idle test misses lock waits)
IDLE_LEAVES = ("Condition.wait (threading.py", "Event.wait (threading.py")
_PREFIX = re.compile(r"/\S*?/(site-packages|python3\.\d+)/")


def _clean(frame: str) -> str:
    return _PREFIX.sub("", frame).replace(str(Path.cwd()) + "/", "")


def read(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    samples = []
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if stack and count.isdigit():
            samples.append(([_clean(f) for f in stack.split(";")], int(count)))
    return samples


def stage_of(frames: list[str]) -> str:
    for stages in (HANDLER, FRAMEWORK):
        for frame in reversed(frames):
            for label, needle in stages:
                if needle in frame:
                    return label
    return "event loop, asyncio, other"


def summarise(samples: list[tuple[list[str], int]], top: int = 25) -> str:
    stages: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    idle = sum(n for frames, n in samples if frames[-1].startswith(IDLE_LEAVES))
    samples = [(f, n) for f, n in samples if not f[-1].startswith(IDLE_LEAVES)]
    total = sum(n for _, n in samples) or 1
    for frames, n in samples:
        stages[stage_of(frames)] += n
        for frame in dict.fromkeys(frames):  # once per sample, outermost first (a stable order)
            inclusive[frame] += n
    out = [f"{total} busy samples ({idle} more in lock waits left out)", ""]
    out += ["| stage | share |", "|---|---|"]
    out += [f"| {label} | {100 * n / total:.1f}% |" for label, n in stages.most_common()]
    out += ["", "| function (inclusive) | share |", "|---|---|"]
    ranked = sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]  # ties: outermost first
    out += [f"| `{f}` | {100 * n / total:.1f}% |" for f, n in ranked]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    top = int(args[2]) if len(args) > 2 and args[1] == "--top" else 25
    with open(args[0], encoding="utf-8") as fh:
        print(summarise(read(fh), top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
