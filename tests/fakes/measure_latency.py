"""Measure the fake upstream's own JSON latency: ``python -m tests.fakes.measure_latency``.

Starts ``python -m fake_upstream`` on a free loopback port and times sequential
(concurrency 1) requests: POST /v1/chat/completions and GET /v1/models (precomputed bytes,
so the client-plus-loopback floor) with one persistent httpx client, then chat again with a
raw keep-alive socket, which leaves out httpx's own cost. Prints p50 / p99 in milliseconds.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import httpx
import orjson

BODY = orjson.dumps(
    {"model": "m", "messages": [{"role": "user", "content": "hello there how are you today"}]}
)


def _percentiles(run: Callable[[], object], n: int, warmup: int) -> tuple[float, float]:
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    samples.sort()
    return samples[n // 2] * 1e3, samples[min(n - 1, int(n * 0.99))] * 1e3


def _raw_client(port: int) -> Callable[[], bytes]:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY)
    )

    def once() -> bytes:
        sock.sendall(request)
        data = sock.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(rest) < length:
            rest += sock.recv(65536)
        return rest

    return once


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=500)
    args = parser.parse_args(argv)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "fake_upstream", "--port", str(port)]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        server.stdout.readline()  # "fake-upstream listening on ..."
        headers = {"content-type": "application/json"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/v1") as client:
            cases: list[tuple[str, Callable[[], object]]] = [
                (
                    "httpx  POST chat JSON",
                    lambda: client.post("/chat/completions", content=BODY, headers=headers),
                ),
                ("httpx  GET /v1/models", lambda: client.get("/models")),
                ("socket POST chat JSON", _raw_client(port)),
            ]
            for name, run in cases:
                p50, p99 = _percentiles(run, args.n, args.warmup)
                print(f"{name}: n={args.n} p50={p50:.3f} ms p99={p99:.3f} ms")
    finally:
        server.terminate()
        server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
