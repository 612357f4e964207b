"""``effgate demo``: the gateway in front of two fake models, no provider key needed.

Starts the fake upstream twice (``mock-small`` on 9001, ``mock-big`` on 9002, as the demo
policy expects) on the gateway's own event loop, then serves the gateway with
``policies/examples/demo.yaml``. Everything stays on loopback.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import uvicorn

import policies

DEMO_POLICY = Path(policies.__file__).resolve().parent / "examples" / "demo.yaml"

BANNER = """
effgate demo: gateway on http://{host}:{port}/v1 (fake models on :9001 and :9002)

  curl -s http://{host}:{port}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "auto", "messages": [{{"role": "user", "content": "Summarise: hello"}}]}}'
  curl -s http://{host}:{port}/v1/route/explain -d '{{"model": "auto", "messages": \\
    [{{"role": "user", "content": "Prove that the halting problem is undecidable."}}]}}'
  OPENAI_BASE_URL=http://{host}:{port}/v1 OPENAI_API_KEY=demo python your_app.py
  curl -s http://{host}:{port}/metrics | grep effgate_cost

records go to ./records/records.jsonl; `effgate report --records records` summarises them.
"""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="effgate demo", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--policy", type=Path, default=DEMO_POLICY)
    parser.add_argument("--tokens-per-s", type=float, default=80.0, help="fake stream pacing")
    args = parser.parse_args(argv)

    from fake_upstream import FakeConfig, FakeUpstream
    from gateway.app import create_app
    from gateway.settings import Settings

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault("EFFGATE_RECORDS_DIR", "records")
    settings = Settings(policy_path=args.policy, host=args.host, port=args.port)

    async def run() -> None:
        servers = []
        for model, port, latency in (("mock-small", 9001, 40.0), ("mock-big", 9002, 250.0)):
            fake_config = FakeConfig(
                models=(model,), latency_ms=latency, tokens_per_s=args.tokens_per_s
            )
            servers.append(await FakeUpstream(fake_config).start("127.0.0.1", port))
        print(BANNER.format(host=args.host, port=args.port), flush=True)
        config = uvicorn.Config(
            create_app(settings),
            host=args.host,
            port=args.port,
            loop="none",
            http="httptools",
            log_level="info",
            proxy_headers=False,
            server_header=False,
        )
        try:
            await uvicorn.Server(config).serve()
        finally:
            for server in servers:
                await server.aclose()

    try:
        import uvloop

        uvloop.run(run())
    except KeyboardInterrupt:
        pass
    return 0
