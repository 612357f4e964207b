"""Gateway test fixtures: two fake upstreams, a policy file, and the gateway under real uvicorn.

    def test_x(make_gateway, small):
        gw = make_gateway()                      # policy: models small/big, routes auto/routed
        r = gw.http().post("/v1/chat/completions", json=chat())
        assert small.stats["requests"]["/v1/chat/completions"] == 1
        assert gw.metric("effgate_requests_total", outcome="ok") == 1

Every gateway runs under uvicorn (asyncio loop, httptools) on 127.0.0.1 in a thread, with a
fresh Prometheus registry, records in ``tmp_path`` and a stub difficulty estimator injected
through ``create_app(estimator=...)``, so no test depends on the shipped artifact. The fakes
are session-wide; their faults and stats are reset before each test that asks for them.
"""

from __future__ import annotations

import atexit
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import uvicorn
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from fake_upstream.httpserver import Request, Response, ThreadedServer
from gateway.app import create_app
from gateway.edge import GatewayApp
from gateway.kv import KV
from gateway.settings import Settings
from gateway.upstreams.pool import Factory
from tests.fakes.servers import FakeUpstreamHandle, serve_fake_upstream
from tests.redis_server import redis_server  # noqa: F401 (a fixture for tests/gateway)

# Short deadlines keep failure tests fast; each test that needs others passes its own.
TIMEOUTS = {"connect_s": 1.0, "first_byte_s": 2.0, "idle_s": 2.0, "total_s": 5.0}
SKILLS = {"small": 0.5, "big": 2.0}
DISCRIMINATION = 1.7
PRICES = {
    "small": {"input_usd_per_mtok": 0.15, "output_usd_per_mtok": 0.60},
    "big": {"input_usd_per_mtok": 2.50, "output_usd_per_mtok": 10.00},
}


def wait_until(check: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        time.sleep(0.01)


def complete_lines(data: bytes) -> list[bytes]:
    """The non-empty lines of a JSON Lines file another thread or process is writing: a
    last line without its newline is still being written and is left out."""
    return [ln for ln in data[: data.rfind(b"\n") + 1].splitlines() if ln]


def clear_of_minute_boundary(seconds: float = 10.0) -> None:
    """Wait, if need be, until the current UTC minute has ``seconds`` left: rate limits count
    requests per fixed UTC minute (``gateway.meters``), so a test that spends a limit and then
    expects a 429 must not straddle a minute's end."""
    left = 60 - time.time() % 60
    if left < seconds:
        time.sleep(left + 0.05)


_HELD: list[socket.socket] = []


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused).

    The port stays bound, never listening, for the life of the test process: a port merely
    freed again could be taken by a fake upstream another worker starts before the test
    connects (CI once got that upstream's 404 instead of a refused connection)."""
    if not _HELD:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        _HELD.append(s)
        atexit.register(s.close)
    port: int = _HELD[0].getsockname()[1]
    return port


class ServedApp:
    """An ASGI app under uvicorn (httptools) on a free loopback port, in a daemon thread."""

    def __init__(self, app: Any, *, loop: str = "asyncio") -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.origin = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(
            app,
            loop=loop,
            http="httptools",
            lifespan="on",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self.stopped = False

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive():
                self._sock.close()
                raise RuntimeError("the app failed to start (see the log above)")
            assert time.monotonic() < deadline, "uvicorn did not start in 20 s"
            time.sleep(0.005)

    def stop(self) -> None:
        """Shut down; fails if the app's lifespan shutdown raised (resources left open)."""
        if self.stopped:
            return
        self.stopped = True
        self._server.should_exit = True
        self._thread.join(timeout=15)
        self._sock.close()
        assert not self._thread.is_alive(), "uvicorn did not shut down"
        lifespan = self._server.lifespan
        assert not (lifespan.error_occurred or lifespan.shutdown_failed), (
            "the app's lifespan shutdown failed (see the log above)"
        )


@contextlib.contextmanager
def serve(app: Any, *, loop: str = "asyncio") -> Iterator[ServedApp]:
    """Serve ``app`` until the block ends; ``.origin`` is its base URL."""
    served = ServedApp(app, loop=loop)
    served.start()
    try:
        yield served
    finally:
        served.stop()


@contextlib.contextmanager
def serve_app(app: Any, *, loop: str = "asyncio") -> Iterator[str]:
    """Serve ``app`` until the block ends; yield its origin (``http://127.0.0.1:PORT``)."""
    with serve(app, loop=loop) as served:
        yield served.origin


@contextlib.contextmanager
def blackhole() -> Iterator[str]:
    """A loopback base URL whose listener never accepts: its backlog is full, so SYNs are
    dropped and a connect times out (instead of being refused)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            fillers.append(s)
        time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        for s in fillers:
            s.close()
        listener.close()


class ScriptedUpstream:
    """A loopback upstream (the fake's HTTP server, our own ``Handler``) that answers every
    request with one canned response: for bodies the fake upstream never sends."""

    def __init__(self, body: bytes, content_type: str = "application/json") -> None:
        self.response = Response(200, body, content_type=content_type)
        self.requests: list[Request] = []

    def dispatch(self, request: Request) -> Response:
        self.requests.append(request)
        return self.response


@contextlib.contextmanager
def serve_scripted(
    body: bytes, content_type: str = "application/json"
) -> Iterator[tuple[ScriptedUpstream, str]]:
    """Yield the scripted upstream and its base URL (ending in /v1)."""
    upstream = ScriptedUpstream(body, content_type)
    server = ThreadedServer(upstream)
    try:
        yield upstream, f"http://127.0.0.1:{server.port}/v1"
    finally:
        server.close()


@dataclass
class StubEstimator:
    """The ``DifficultyEstimator`` seam: a fixed difficulty a test can change, and a count."""

    value: float = 0.0
    skills: dict[str, float] = field(default_factory=lambda: dict(SKILLS))
    discrimination: float = DISCRIMINATION
    calls: int = 0
    error: Exception | None = None

    def difficulty(self, messages: list[object]) -> float:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.value


def model_spec(name: str, base_url: str, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "id": name,
        "provider": "openai",
        "base_url": base_url,
        "upstream_model": f"mock-{name}",
        **PRICES[name],
        "context_window": 128000,
        "timeouts": dict(TIMEOUTS),
        "max_retries": 1,
    }
    spec.update(extra)
    return spec


def policy_dict(
    small_url: str,
    big_url: str,
    *,
    small: dict[str, Any] | None = None,
    big: dict[str, Any] | None = None,
    routes: list[dict[str, Any]] | None = None,
    default_route: str = "auto",
    **top: Any,
) -> dict[str, Any]:
    """The test policy: models small/big; route ``auto`` (no bar) and ``routed`` (bar 0.8)."""
    return {
        "version": 1,
        "models": [
            model_spec("small", small_url, **(small or {})),
            model_spec("big", big_url, **(big or {})),
        ],
        "routes": routes
        or [
            {"name": "auto", "candidates": ["small", "big"]},
            {"name": "routed", "candidates": ["small", "big"], "quality_bar": 0.8},
        ],
        "default_route": default_route,
        **top,
    }


@dataclass
class Gateway:
    """One running gateway: where it listens and everything a test inspects."""

    served: ServedApp
    app: GatewayApp
    settings: Settings
    registry: CollectorRegistry
    estimator: StubEstimator
    policy_path: Path
    records_dir: Path
    clients: list[openai.OpenAI] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.served.origin

    def stop(self) -> None:
        for client in self.clients:  # an SDK client holds pooled sockets until closed
            client.close()
        self.clients.clear()
        self.served.stop()

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
        total = 0.0
        for fam in self.registry.collect():
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """GET /metrics over HTTP and parse it: {(sample name, labels): value}."""
        text = httpx.get(self.base_url + "/metrics", timeout=10).text
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        }

    def http(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=kw.pop("timeout", 20), **kw)

    def sdk(self, api_key: str = "sk-test", **kw: Any) -> openai.OpenAI:
        """An official SDK client, closed when the gateway stops."""
        client = openai.OpenAI(
            base_url=self.v1, api_key=api_key, max_retries=kw.pop("max_retries", 0), **kw
        )
        self.clients.append(client)
        return client

    def async_sdk(self, api_key: str = "sk-test", **kw: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.v1, api_key=api_key, max_retries=kw.pop("max_retries", 0), **kw
        )

    def records(self, *, at_least: int = 0, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Every record in the log (rotated files oldest first), waiting for ``at_least``."""

        def read() -> list[dict[str, Any]]:
            files = sorted(
                self.records_dir.glob("records.jsonl*"),
                key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0,
            )
            lines = [ln for f in files for ln in complete_lines(f.read_bytes())]
            return [orjson.loads(ln) for ln in lines]

        wait_until(lambda: len(read()) >= at_least, timeout, f"{at_least} records")
        return read()

    def write_policy(self, data: dict[str, Any]) -> None:
        self.policy_path.write_text(yaml.safe_dump(data, sort_keys=False))


def chat(text: str = "hello there world", model: str = "auto", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def sse_data(raw: bytes) -> list[bytes]:
    """The ``data`` of each event of a complete SSE body."""
    assert raw.endswith(b"\n\n"), raw[-200:]
    out = []
    for event in raw[:-2].split(b"\n\n"):
        assert event.startswith(b"data: "), event
        out.append(event[6:])
    return out


@pytest.fixture(scope="session")
def small_fake() -> Iterator[FakeUpstreamHandle]:
    with serve_fake_upstream(models=("mock-small",)) as fake:
        yield fake


@pytest.fixture(scope="session")
def big_fake() -> Iterator[FakeUpstreamHandle]:
    with serve_fake_upstream(models=("mock-big",)) as fake:
        yield fake


@pytest.fixture
def small(small_fake: FakeUpstreamHandle) -> FakeUpstreamHandle:
    small_fake.reset()
    return small_fake


@pytest.fixture
def big(big_fake: FakeUpstreamHandle) -> FakeUpstreamHandle:
    big_fake.reset()
    return big_fake


PolicyFactory = Callable[..., dict[str, Any]]


@pytest.fixture
def policy(small: FakeUpstreamHandle, big: FakeUpstreamHandle) -> PolicyFactory:
    """``policy(**overrides) -> dict``: the test policy pointing at the two fakes."""

    def build(**kw: Any) -> dict[str, Any]:
        return policy_dict(
            kw.pop("small_url", small.base_url), kw.pop("big_url", big.base_url), **kw
        )

    return build


GatewayFactory = Callable[..., Gateway]


@pytest.fixture
def make_gateway(tmp_path: Path, policy: PolicyFactory) -> Iterator[GatewayFactory]:
    """``make_gateway(policy=None, *, estimator=, kv=, upstream_factory=, **settings)``."""
    stack = contextlib.ExitStack()
    count = 0

    def make(
        policy_data: dict[str, Any] | None = None,
        *,
        estimator: StubEstimator | None = None,
        kv: KV | None = None,
        upstream_factory: Factory | None = None,
        **settings: Any,
    ) -> Gateway:
        nonlocal count
        count += 1
        root = tmp_path / f"gw{count}"
        root.mkdir()
        policy_path = root / "policy.yaml"
        policy_path.write_text(yaml.safe_dump(policy_data or policy(), sort_keys=False))
        values: dict[str, Any] = {
            "policy_path": policy_path,
            "records_dir": root / "records",
            "policy_poll_s": 60.0,
            "retry_backoff_s": 0.01,
            "retry_backoff_max_s": 0.02,
            "circuit_failures": 50,
            "circuit_cooldown_s": 30.0,
        }
        values.update(settings)
        cfg = Settings(**values)
        registry = CollectorRegistry()
        est = estimator or StubEstimator()
        app = create_app(
            cfg, registry=registry, upstream_factory=upstream_factory, estimator=est, kv=kv
        )
        served = stack.enter_context(serve(app))
        gw = Gateway(served, app, cfg, registry, est, policy_path, root / "records")
        stack.callback(gw.stop)
        return gw

    with stack:
        yield make


@pytest.fixture
def gateway(make_gateway: GatewayFactory) -> Gateway:
    return make_gateway()
