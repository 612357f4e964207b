"""Fake model servers for tests, benchmarks and the demo: never part of the serving gateway.

- ``server``: ``FakeUpstream``, an OpenAI-compatible fake (JSON, SSE, embeddings, models) with
  fault injection; ``effgate fake-upstream`` / ``python -m fake_upstream``.
- ``anthropic``: ``FakeAnthropic``, the Anthropic Messages API, for the litellm path.
- ``httpserver``: the small httptools HTTP/1.1 server both run on (an event loop, or a thread).
- ``replies``: deterministic replies and token counts; ``render``: their JSON and SSE bodies.
- ``faults``: fault markers (``[[fault:...]]`` in a prompt) and the admin fault queue.

Nothing here imports ``gateway``; the gateway imports this package only for ``effgate demo``.
"""

from __future__ import annotations

from fake_upstream.server import FakeConfig, FakeUpstream, main

__all__ = ["FakeConfig", "FakeUpstream", "main"]
