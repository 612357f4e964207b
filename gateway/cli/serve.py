"""``effgate serve``: the app under uvicorn with uvloop and httptools, one worker per process.

One worker because Prometheus' multiprocess mode disables custom collectors (the GPU and
circuit collectors): scale with replicas instead. The estimator and the policy are loaded and
checked before the server starts, so a broken file is a clear message and exit status 2,
not a traceback from inside the lifespan.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

if TYPE_CHECKING:
    from gateway.edge import GatewayApp

logger = logging.getLogger("effgate.serve")


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGINT/SIGTERM after a graceful shutdown; we return normally (exit 0).

    With EFFGATE_SHUTDOWN_DELAY_S, a first SIGTERM only marks the app draining (/readyz 503)
    and the server goes on serving for that long (a second SIGTERM, or SIGINT, cuts it short).
    Then uvicorn closes the listening socket (new connections are refused), closes idle
    connections, lets requests and streams in flight finish for EFFGATE_SHUTDOWN_TIMEOUT_S,
    cancels what is left (cut requests answer 503 / a final error event, and are recorded),
    then runs the lifespan shutdown, which flushes the request records."""

    def __init__(self, config: uvicorn.Config, app: GatewayApp, delay_s: float) -> None:
        super().__init__(config)
        self._app = app
        self._delay_s = delay_s
        self._drain_since: float | None = None
        self._drain_logged = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        state = getattr(self._app.state, "effgate", None)
        if (
            sig == signal.SIGTERM
            and self._delay_s > 0
            and self._drain_since is None
            and not self.should_exit
            and state is not None
        ):
            # a signal handler: set flags only; on_tick (in the loop) logs and ends the wait
            state.draining = True
            self._drain_since = time.monotonic()
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        since = self._drain_since
        if since is not None and not self.should_exit:
            if not self._drain_logged:
                self._drain_logged = True
                logger.info("SIGTERM: draining for %g s (/readyz answers 503), then stopping",
                            self._delay_s)  # fmt: skip
            if time.monotonic() - since >= self._delay_s:
                self.should_exit = True
        return await super().on_tick(counter)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {
            sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="effgate serve", description=__doc__.split("\n")[0])
    parser.add_argument("--policy", type=Path, help="policy YAML (default: EFFGATE_POLICY_PATH)")
    parser.add_argument("--host", help="listen address (default: EFFGATE_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default: EFFGATE_PORT or 8080)")
    args = parser.parse_args(argv)

    from pydantic import ValidationError

    from gateway.app import create_app, load_estimator
    from gateway.settings import Settings
    from gateway.transport import server_config
    from policies.errors import PolicyLoadError
    from policies.loader import load_policy
    from router_models import ArtifactError

    overrides: dict[str, object] = {}
    if args.policy is not None:
        overrides["policy_path"] = args.policy
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        print(f"effgate serve: invalid EFFGATE_* settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # httpx logs every request at INFO: a line per upstream call on the hot path
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        estimator = load_estimator(settings)
        load_policy(
            settings.policy_path,
            skills=dict(estimator.skills),
            discrimination=float(estimator.discrimination),
        )
    except (ArtifactError, PolicyLoadError, OSError) as exc:
        print(f"effgate serve: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings, estimator=estimator)
    # httptools under effgate's header and body deadlines and connection cap, the keep-alive
    # and the graceful-shutdown deadline from settings (gateway/transport.py)
    config = server_config(app, settings)
    server = _Server(config, app, settings.shutdown_delay_s)
    tune_gc()
    server.run()
    return 0 if server.started else 1


# Measured under saturation (docs/benchmarks.md): with Python's defaults (700, 10, 10) the
# collector ran ~18 full collections in 8 s of saturation, 25 to 40 ms each, a stall that
# every request in flight waits out; with the start-up heap frozen and a larger first
# generation, one, and throughput rose by a quarter.
GC_THRESHOLDS = (20_000, 20, 20)


def tune_gc() -> None:
    """Freeze what start-up built (modules, the estimator, the policy: never garbage) so full
    collections stop re-scanning it, and collect the young generation less often: a request's
    objects die by reference count long before a collection would find them."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
