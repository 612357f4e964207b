"""The upstream clients of the live policy, reused across reloads and closed when retired.

A client is keyed by everything that shapes it (provider, base URL, key variable, timeouts, pool
size, upstream model), so a reload that leaves a model alone keeps its warm connections; clients
a reload retires are closed after a grace period that lets in-flight requests finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gateway.upstreams.base import Upstream
from policies.compiled import CompiledPolicy, ModelEntry

log = logging.getLogger("effgate.upstreams")

Factory = Callable[[ModelEntry], Upstream]


def upstream_key(entry: ModelEntry) -> tuple[object, ...]:
    return (
        entry.provider,
        entry.base_url,
        entry.api_key_env,
        entry.timeouts,
        entry.max_connections,
        entry.upstream_model,
    )


def default_factory(pool_timeout_s: float, http_client: str = "httptools") -> Factory:
    """Upstreams by provider: OpenAI-compatible ones over ``http_client`` (httptools by
    default; aiohttp or httpx), the others through litellm. Each is imported when named."""

    def build(entry: ModelEntry) -> Upstream:
        if entry.provider == "openai":
            if http_client == "httpx":
                from gateway.upstreams.httpx_client import HttpxUpstream

                return HttpxUpstream(entry, pool_timeout_s=pool_timeout_s)
            if http_client == "aiohttp":
                from gateway.upstreams.aiohttp_client import AiohttpUpstream

                return AiohttpUpstream(entry)
            from gateway.upstreams.httptools_client import HttptoolsUpstream

            return HttptoolsUpstream(entry)
        from gateway.upstreams.litellm_client import LitellmUpstream  # only when a policy names one

        return LitellmUpstream(entry)

    return build


class UpstreamPool:
    def __init__(self, factory: Factory, *, grace_s: float = 60.0) -> None:
        self._factory = factory
        self._grace_s = grace_s
        self._by_key: dict[tuple[object, ...], Upstream] = {}
        self._by_model: dict[str, Upstream] = {}
        self._retiring: dict[asyncio.Task[None], Upstream] = {}

    def get(self, model_id: str) -> Upstream:
        return self._by_model[model_id]

    def sync(self, policy: CompiledPolicy) -> None:
        """Build clients for ``policy``; reuse unchanged ones; retire the rest after a grace."""
        by_key: dict[tuple[object, ...], Upstream] = {}
        by_model: dict[str, Upstream] = {}
        for entry in policy.models.values():
            key = upstream_key(entry)
            up = by_key.get(key) or self._by_key.get(key)
            if up is None:
                up = self._factory(entry)
            by_key[key] = up
            by_model[entry.id] = up
        retired = [u for k, u in self._by_key.items() if k not in by_key]
        self._by_key, self._by_model = by_key, by_model
        for up in retired:
            task = asyncio.ensure_future(self._retire(up))
            self._retiring[task] = up
            task.add_done_callback(lambda t: self._retiring.pop(t, None))

    async def _retire(self, up: Upstream) -> None:
        await asyncio.sleep(self._grace_s)
        await up.aclose()

    async def aclose(self) -> None:
        ups = {id(u): u for u in self._by_key.values()}
        for task, up in list(self._retiring.items()):
            task.cancel()
            ups[id(up)] = up
        for up in ups.values():
            await up.aclose()
        self._by_key.clear()
        self._by_model.clear()
