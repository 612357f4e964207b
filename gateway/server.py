"""``effgate serve``: the app under uvicorn with uvloop and httptools, one worker per process.

One worker because Prometheus' multiprocess mode disables custom collectors (the GPU and
circuit collectors): scale with replicas instead.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import uvicorn


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="effgate serve", description=__doc__)
    parser.add_argument("--policy", type=Path, help="policy YAML (default: EFFGATE_POLICY_PATH)")
    parser.add_argument("--host", help="listen address (default: EFFGATE_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default: EFFGATE_PORT or 8080)")
    args = parser.parse_args(argv)

    from gateway.app import create_app
    from gateway.settings import Settings
    from policies.store import PolicyLoadError

    overrides: dict[str, object] = {}
    if args.policy is not None:
        overrides["policy_path"] = args.policy
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    settings = Settings(**overrides)  # type: ignore[arg-type]
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not Path(settings.policy_path).exists():
        print(f"effgate: policy file not found: {settings.policy_path}")
        return 2
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=settings.access_log,
        log_level=settings.log_level,
        timeout_graceful_shutdown=30,
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    except PolicyLoadError as exc:
        print(f"effgate: {exc}")
        return 2
    return 0
