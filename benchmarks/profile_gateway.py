"""``effgate serve`` under cProfile, timed by the event-loop thread's CPU clock.

    python -m benchmarks.profile_gateway OUT.prof [serve options...]
    python -m benchmarks.profile_gateway --show OUT.prof [--limit N]

``python -m cProfile`` times with the wall clock, so on a busy machine every function that
happens to be running when the scheduler takes the CPU away looks slow (a socket write that
wakes the client, a lock release that wakes a thread). ``time.thread_time`` counts only the CPU
this thread used, which is what a request costs the gateway; work in other threads (the record
writer) is left out. The profile is written when the server stops on SIGINT or SIGTERM.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import signal
import sys
import time
from pathlib import Path
from types import FrameType


def profile_serve(out: Path, serve_argv: list[str]) -> int:
    from gateway.cli.serve import main as serve

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    profiler = cProfile.Profile(time.thread_time)
    # NOTE: uvicorn re-raises the signal that stopped it after shutdown; a KeyboardInterrupt
    # from our own handler lets the profile be written first.
    signal.signal(signal.SIGTERM, stop)
    code = 0
    profiler.enable()
    try:
        code = serve(serve_argv)
    except KeyboardInterrupt:
        pass
    finally:
        profiler.disable()
        profiler.dump_stats(str(out))
    return code


def summary(path: Path, limit: int = 30) -> str:
    """Top functions by cumulative, then by own CPU time, as pstats prints them."""
    buf = io.StringIO()
    stats = pstats.Stats(str(path), stream=buf)
    stats.strip_dirs()
    for key in ("cumulative", "tottime"):
        stats.sort_stats(key).print_stats(limit)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    if args[0] == "--show":
        limit = int(args[3]) if len(args) > 3 and args[2] == "--limit" else 30
        print(summary(Path(args[1]), limit))
        return 0
    return profile_serve(Path(args[0]), args[1:])


if __name__ == "__main__":
    sys.exit(main())
