"""Providers that do not speak OpenAI's API (Anthropic, Bedrock, Vertex ...) through litellm.

Imported only when a policy names such a provider. litellm is heavy (about 6 s to import) and,
unless ``LITELLM_LOCAL_MODEL_COST_MAP=True`` is set before the import, downloads its price map
at import: we set it, import once in a worker thread, and reply in OpenAI's wire format (JSON,
or SSE events the relay handles like any other upstream's).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import orjson

from gateway.errors import ConnectFailed, ProtocolFailed, TimedOut, error_body, upstream_status
from gateway.sse import DONE_EVENT, encode_event
from gateway.upstreams.base import Reply, Stream
from policies.compiled import ModelEntry

_CONTROL = ("model", "messages", "stream", "stream_options", "input")
_lock = asyncio.Lock()


def import_litellm() -> Any:
    """Import litellm with the bundled price map and no telemetry (never calls out)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_TELEMETRY", "False")
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    return litellm


@contextmanager
def map_litellm_errors(name: str) -> Iterator[None]:
    """litellm raises openai's exception types: map them like ``map_httpx_errors`` does."""
    import openai

    try:
        yield
    except openai.APITimeoutError as exc:
        raise TimedOut(f"upstream {name!r} timed out") from exc
    except openai.APIConnectionError as exc:
        raise ConnectFailed(f"upstream {name!r} is unreachable") from exc
    except openai.APIStatusError as exc:
        message = f"upstream {name!r}: {getattr(exc, 'message', '') or type(exc).__name__}"
        body = error_body(message, "upstream_error", None)
        raise upstream_status(exc.status_code, body, {}) from exc
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        # litellm failed to translate the provider's answer: an upstream fault, not ours
        raise ProtocolFailed(f"upstream {name!r} sent an answer litellm could not read") from exc


class _LitellmStream:
    def __init__(self, response: Any, name: str) -> None:
        self._response = response
        self._name = name

    async def chunks(self) -> AsyncIterator[bytes]:
        with map_litellm_errors(self._name):
            async for chunk in self._response:
                yield encode_event(orjson.dumps(chunk.model_dump(exclude_none=False)))
        yield DONE_EVENT

    async def aclose(self) -> None:
        close = getattr(self._response, "aclose", None)
        if close is not None:
            await close()


class LitellmUpstream:
    """One model served through ``litellm.acompletion`` / ``litellm.aembedding``."""

    _module: Any = None

    def __init__(self, entry: ModelEntry) -> None:
        self.name = entry.id
        self._entry = entry
        self._model = f"{entry.provider}/{entry.upstream_model}"

    async def _litellm(self) -> Any:
        if LitellmUpstream._module is None:
            async with _lock:
                if LitellmUpstream._module is None:
                    LitellmUpstream._module = await anyio.to_thread.run_sync(import_litellm)
        return LitellmUpstream._module

    def _kwargs(self, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        e = self._entry
        kwargs = {k: v for k, v in body.items() if k not in _CONTROL}
        kwargs.update(model=self._model, timeout=timeout, num_retries=0)
        if e.base_url:
            kwargs["api_base"] = e.base_url
        if e.api_key_env and (key := os.environ.get(e.api_key_env)):
            kwargs["api_key"] = key
        return kwargs

    async def complete(self, path: str, body: dict[str, Any], deadline_s: float) -> Reply:
        litellm = await self._litellm()
        kwargs = self._kwargs(body, deadline_s)
        with map_litellm_errors(self.name):
            if path == "/embeddings":
                resp = await litellm.aembedding(input=body.get("input"), **kwargs)
            else:
                resp = await litellm.acompletion(messages=body["messages"], **kwargs)
        return Reply(200, orjson.dumps(resp.model_dump()))

    async def open_stream(self, body: dict[str, Any], first_byte_s: float) -> Stream:
        litellm = await self._litellm()
        kwargs = self._kwargs(body, first_byte_s)
        with map_litellm_errors(self.name):
            resp = await litellm.acompletion(
                messages=body["messages"],
                stream=True,
                stream_options={"include_usage": True},
                **kwargs,
            )
        return _LitellmStream(resp, self.name)

    async def aclose(self) -> None:
        if LitellmUpstream._module is not None:
            # litellm caches its own HTTP clients per provider; close them with the gateway
            await LitellmUpstream._module.close_litellm_async_clients()
