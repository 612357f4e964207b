"""Start the fake upstreams on ephemeral loopback ports, in a background thread.

    with serve_fake_upstream(models=("small", "big"), latency_ms=5) as fake:
        client = openai.OpenAI(base_url=fake.base_url, api_key="x")
        fake.set_faults({"kind": "status", "status": 503, "count": 2})
        ...
        assert fake.stats["requests"]["/v1/chat/completions"] == 3

`serve_fake_anthropic` does the same for the Anthropic Messages API. Both return a handle
that is also a context manager; `close()` is idempotent.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from fake_upstream import FakeConfig, FakeUpstream
from fake_upstream.anthropic import FakeAnthropic
from fake_upstream.faults import Fault
from fake_upstream.httpserver import Handler, ThreadedServer


class _Running:
    def __init__(self, handler: Handler, host: str, port: int) -> None:
        self._server = ThreadedServer(handler, host, port)
        self.host = host
        self.port = self._server.port
        self.origin = f"http://{host}:{self.port}"

    def close(self) -> None:
        self._server.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class FakeUpstreamHandle(_Running):
    """A running `FakeUpstream`: `base_url` ends in /v1, as OpenAI clients expect."""

    def __init__(self, upstream: FakeUpstream, host: str, port: int) -> None:
        super().__init__(upstream, host, port)
        self.upstream = upstream
        self.base_url = f"{self.origin}/v1"

    def __enter__(self) -> FakeUpstreamHandle:
        return self

    @property
    def stats(self) -> dict[str, Any]:
        """The same snapshot GET /_fake/stats returns."""
        return self.upstream.snapshot()

    def set_faults(self, *faults: Fault | dict[str, Any]) -> None:
        """Replace the fault queue, e.g. ``set_faults({"kind": "reset"}, {"kind": "hang"})``."""
        self.upstream.set_faults(faults)

    def clear_faults(self) -> None:
        self.upstream.faults.clear()

    def reset(self) -> None:
        """Clear stats and faults."""
        self.upstream.reset()


def serve_fake_upstream(
    host: str = "127.0.0.1", port: int = 0, **config: Any
) -> FakeUpstreamHandle:
    """Serve a fake OpenAI upstream; `config` are `FakeConfig` fields (models, latency_ms, ...)."""
    if isinstance(config.get("models"), list | str):
        models = config["models"]
        config["models"] = tuple(models.split(",") if isinstance(models, str) else models)
    return FakeUpstreamHandle(FakeUpstream(FakeConfig(**config)), host, port)


class FakeAnthropicHandle(_Running):
    """A running `FakeAnthropic`; pass `origin` as litellm's api_base (it adds /v1/messages)."""

    def __init__(self, fake: FakeAnthropic, host: str, port: int) -> None:
        super().__init__(fake, host, port)
        self.fake = fake
        self.base_url = self.origin

    def __enter__(self) -> FakeAnthropicHandle:
        return self

    @property
    def requests(self) -> list[tuple[dict[str, str], Any]]:
        """(headers, body) of every request received, oldest first."""
        return list(self.fake.requests)


def serve_fake_anthropic(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    api_key: str | None = None,
    models: tuple[str, ...] = (),
    reply_words: int = 16,
) -> FakeAnthropicHandle:
    """Serve a fake Anthropic Messages API; `api_key` set means only that key is accepted."""
    fake = FakeAnthropic(api_key=api_key, models=models, reply_words=reply_words)
    return FakeAnthropicHandle(fake, host, port)
