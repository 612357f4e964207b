"""The streaming relay: upstream SSE bytes to the client, event by event, as they arrive.

A pure ASGI response (no buffering, no re-encoding). While it relays it stamps the time to
first token, picks usage out of the final usage event (dropping that event when the client did
not ask for usage, adding ``effgate_cost_usd`` when it did), rewrites ``model`` to the catalog
id with a byte replace, and watches for the client leaving: a disconnect cancels the relay and
closes the upstream response, which is what makes vLLM stop generating. A stream that breaks,
stalls past the idle deadline, ends without ``[DONE]`` or is cut by the shutdown deadline ends
with one OpenAI-shaped error event (vLLM's ``create_streaming_error_response``), never a silent
truncated 200.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from gateway.accounting import Usage, usage_from
from gateway.errors import (
    ErrorKind,
    ProtocolFailed,
    ShuttingDown,
    StreamCut,
    UpstreamError,
    error_body,
)
from gateway.exchange import Exchange
from gateway.sse import DONE_EVENT, EventSplitter, encode_event, event_data
from gateway.upstreams.base import Stream

# after [DONE], how long the end of the upstream's HTTP message may take to arrive: read to
# its end, the connection goes back to the pool; not there yet, it is closed instead
DRAIN_S = 0.005
# of a stream sampled for shadow evaluation, the content events kept for the judge
CAPTURE_BYTES = 256 * 1024


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """Read what the upstream sends after ``[DONE]`` (usually only the end of the message)."""
    try:
        async with asyncio.timeout(DRAIN_S):
            async for _ in chunks:
                pass
    except (TimeoutError, UpstreamError):
        pass


async def close_chunks(chunks: AsyncIterator[bytes]) -> None:
    """Close a chunk generator now, not when the garbage collector finds it: its frame holds
    the upstream response (and so a connection) until it is closed."""
    if isinstance(chunks, AsyncGenerator):
        await chunks.aclose()


@functools.lru_cache(maxsize=1024)
def model_rewriter(upstream_name: str, catalog_id: str) -> Callable[[bytes], bytes]:
    """Byte-level ``"model": "<upstream>"`` -> ``"model": "<catalog>"`` for relayed chunks
    (built once per pair of names: the names come from policies, bounded by the cache)."""
    if upstream_name == catalog_id:
        return lambda b: b
    src = orjson.dumps(upstream_name)
    dst = orjson.dumps(catalog_id)
    pairs = [(b'"model":' + src, b'"model":' + dst), (b'"model": ' + src, b'"model": ' + dst)]

    def rewrite(b: bytes) -> bytes:
        for old, new in pairs:
            if old in b:
                b = b.replace(old, new)
        return b

    return rewrite


class RelayResponse:
    """ASGI response relaying one upstream SSE stream. ``first`` is what arrived already."""

    def __init__(
        self,
        *,
        stream: Stream,
        chunks: AsyncIterator[bytes],
        first: bytes,
        exchange: Exchange,
        headers: list[tuple[bytes, bytes]],
        include_usage: bool,
        idle_s: float,
        rewrite: Callable[[bytes], bytes],
        on_finish: Callable[[Exchange], None],
        on_upstream_error: Callable[[str, ErrorKind], None],
    ) -> None:
        self.stream = stream
        self.chunks = chunks
        self.first = first
        self.ex = exchange
        self.start_headers = headers
        self.include_usage = include_usage
        self.idle_s = idle_s
        self.rewrite = rewrite
        self.on_finish = on_finish
        self.on_upstream_error = on_upstream_error
        self.splitter = EventSplitter()
        self.done = False
        self.usage: Usage | None = None
        self.content_events = 0
        self.captured = 0
        self.completed = False
        self.watcher: asyncio.Task[None] | None = None
        self.last_chunk = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ex = self.ex
        task = asyncio.current_task()
        assert task is not None
        watch = self._watch(receive, task)
        try:
            await send(
                {"type": "http.response.start", "status": 200, "headers": self.start_headers}
            )
            # a plain task watches for the client leaving and cancels the pump: a tenth of
            # what a task group costs, and started after the first event is out
            try:
                await self._pump(send, watch)
            except asyncio.CancelledError:
                task.uncancel()
                if ex.outcome != "cancelled":
                    # not the client leaving: the server cut the stream (the shutdown
                    # deadline). One error event says so, and the record.
                    await self._cut(send)
            if ex.outcome == "cancelled":
                return
            # account before the last byte: a client that sends feedback the moment its
            # stream ends must find the request already known
            await self._complete()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away while we were sending
            ex.outcome = "cancelled"
        finally:
            if self.watcher is not None:
                self.watcher.cancel()
            else:
                watch.close()  # never started
            await self._complete()

    async def _complete(self) -> None:
        """Account (synchronously: nothing can interrupt it), then close the upstream."""
        if self.completed:
            return
        self.completed = True
        self._settle()
        self.on_finish(self.ex)
        try:
            await close_chunks(self.chunks)
        finally:
            await self.stream.aclose()

    async def _watch(self, receive: Receive, pump: asyncio.Task[None]) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.ex.outcome = "cancelled"
        pump.cancel()

    async def _pump(self, send: Send, watch: Coroutine[Any, Any, None]) -> None:
        ex = self.ex
        out = self._events(self.first)
        if out:
            await send({"type": "http.response.body", "body": out, "more_body": True})
            ex.ttft_s = time.perf_counter() - ex.started
        self.watcher = asyncio.get_running_loop().create_task(watch)
        it = self.chunks.__aiter__()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        stalled = False
        timer: list[asyncio.TimerHandle] = []

        # The idle gap: one timer for the whole stream that re-arms itself from the time of
        # the last chunk, rather than a deadline moved (a new timer) after every chunk.
        def watchdog() -> None:
            nonlocal stalled
            due = self.last_chunk + self.idle_s
            if loop.time() >= due:
                stalled = True
                task.cancel()
            else:
                timer[0] = loop.call_at(due, watchdog)

        self.last_chunk = loop.time()
        timer.append(loop.call_at(self.last_chunk + self.idle_s, watchdog))
        try:
            while not self.done:
                try:
                    chunk = await it.__anext__()
                except StopAsyncIteration:
                    break
                out = self._events(chunk)
                if out:
                    if ex.ttft_s is None:
                        ex.ttft_s = time.perf_counter() - ex.started
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                self.last_chunk = loop.time()
        except asyncio.CancelledError:
            if not stalled or ex.outcome == "cancelled":
                raise
            task.uncancel()
            await self._fail(send, "timeout", f"upstream stalled for more than {self.idle_s:g} s")
            return
        except UpstreamError as exc:
            # a transport failure after the first byte is a cut stream, whatever broke
            kind: ErrorKind = "stream_cut" if isinstance(exc, ProtocolFailed) else exc.kind
            await self._fail(send, kind, exc.message)
            return
        finally:
            timer[0].cancel()
        if not self.done:
            await self._fail(send, "stream_cut", "upstream closed the stream before it finished")
            return
        await _drain(it)

    async def _cut(self, send: Send) -> None:
        err = ShuttingDown("The gateway shut down before the stream finished.")
        self.ex.outcome, self.ex.error = err.outcome, err.message
        await send(
            {"type": "http.response.body", "body": encode_event(err.body()), "more_body": True}
        )

    async def _fail(self, send: Send, kind: ErrorKind, message: str) -> None:
        ex = self.ex
        ex.outcome = "stream_error"
        ex.error = message
        self.on_upstream_error(ex.model_id, kind)
        body = error_body(message, StreamCut.type, StreamCut.code)
        await send({"type": "http.response.body", "body": encode_event(body), "more_body": True})

    def _events(self, chunk: bytes) -> bytes:
        parts = []
        for event in self.splitter.feed(chunk):
            data = event_data(event)
            if data == b"[DONE]":
                self.done = True
                parts.append(DONE_EVENT)
                continue
            if b'"usage"' in data and b'"usage":null' not in data and b'"usage": null' not in data:
                kept = self._usage_event(data)
                if kept is not None:
                    parts.append(kept)
                continue
            if data.startswith(b'{"error"'):
                self.ex.outcome = "stream_error"
                self.ex.error = "upstream sent an error event"
            elif b'"content"' in data or b'"tool_calls"' in data:
                self.content_events += 1
                captured = self.ex.answer_events
                if captured is not None and self.captured < CAPTURE_BYTES:
                    captured.append(data)  # a sampled request: the judge will read it
                    self.captured += len(data)
            parts.append(event)
        # one replace per chunk, not per event (re-encoded usage events already say the id)
        return self.rewrite(b"".join(parts)) if parts else b""

    def _usage_event(self, data: bytes) -> bytes | None:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return self.rewrite(encode_event(data))
        usage = usage_from(obj.get("usage")) if isinstance(obj, dict) else None
        if usage is None:
            return self.rewrite(encode_event(data))
        self.usage = usage
        self.ex.price(usage)
        has_choices = bool(obj.get("choices"))
        if not self.include_usage and not has_choices:
            return None
        if not self.include_usage:
            obj["usage"] = None
        else:
            obj["usage"]["effgate_cost_usd"] = round(self.ex.cost_usd, 10)
        if self.ex.model is not None:
            obj["model"] = self.ex.model.id
        return encode_event(orjson.dumps(obj))

    def _settle(self) -> None:
        if self.usage is None and self.ex.model is not None:
            # no usage from upstream: one streamed content event is about one token
            est = Usage(self.ex.prompt_tokens, self.content_events, estimated=True)
            self.ex.price(est)
