"""A fast, deterministic OpenAI-compatible fake model server, with fault injection.

``effgate fake-upstream --port P [--models a,b] [--latency-ms N] [--tokens-per-s N]
[--reply-words N]``, or ``python -m fake_upstream``; in process: `FakeUpstream` on
an event loop (`start` / `serve`), or in a daemon thread: ``ThreadedServer(FakeUpstream(cfg))``
(tests use ``tests.fakes.servers.serve_fake_upstream``).

Endpoints: POST /v1/chat/completions and /v1/completions (JSON, or SSE when ``stream`` is
true), POST /v1/embeddings, GET /v1/models, GET /healthz. Admin (not counted in stats):
POST/GET/DELETE /_fake/faults (`FaultQueue`), GET /_fake/stats (`Stats`), POST /_fake/reset.
Replies and token counts: see `fake_upstream.replies`. Faults: see
`fake_upstream.faults`. A fault marker in the request wins over the admin queue,
which is consumed only by the three POST model endpoints. --latency-ms delays the first byte;
--tokens-per-s paces stream chunks and, for JSON, delays the body by the generation time.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import secrets
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import orjson

from fake_upstream.faults import Fault, FaultError, FaultQueue, Stats, parse_fault
from fake_upstream.faults import parse_marker as _parse_marker
from fake_upstream.httpserver import (
    Connection,
    HttpServer,
    Job,
    Request,
    Response,
    head,
    new_event_loop,
)
from fake_upstream.render import (
    Event,
    chat_events,
    chat_json,
    completion_events,
    completion_json,
    embeddings_json,
    models_json,
)
from fake_upstream.replies import (
    Plan,
    RequestError,
    content_text,
    error_body,
    plan_chat,
    plan_completion,
)

_HEALTH = Response(200, b'{"status":"ok"}')
_MALFORMED: Any = object()  # the parsed body of a request whose body is not JSON
_Route = Callable[[Request, Any], "Response | Job"]
_Kind = Literal["chat", "completion", "embeddings"]


@dataclass(frozen=True, slots=True)
class FakeConfig:
    models: tuple[str, ...] = ()  # empty: every model name is served
    latency_ms: float = 0.0
    tokens_per_s: float = 0.0
    reply_words: int = 16
    embedding_dims: int = 64
    # a judge: grading prompts get {"A": score, ...} by these (text in the answer, score)
    # rules (fake_upstream.replies.judge_text); empty: grading prompts are echoed like any
    judge: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if self.latency_ms < 0 or self.tokens_per_s < 0:
            raise ValueError("latency_ms and tokens_per_s must be >= 0")
        if self.reply_words < 1 or self.embedding_dims < 1:
            raise ValueError("reply_words and embedding_dims must be >= 1")


def _error(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> Response:
    return Response(status, orjson.dumps(error_body(status, message, param, code)))


def _json(payload: Any) -> Response:
    return Response(200, orjson.dumps(payload))


class FakeUpstream:
    """The request handler; `start` / `serve` put it on a socket of the running loop."""

    def __init__(self, config: FakeConfig | None = None) -> None:
        self.config = config or FakeConfig()
        self.faults = FaultQueue()
        self.stats = Stats()
        self._ids = itertools.count(1)
        self._salt = secrets.token_hex(4)
        self._latency = self.config.latency_ms / 1000
        self._models_body = Response(200, models_json(self.config.models))
        self._routes: dict[tuple[str, str], _Route] = {
            ("POST", "/v1/chat/completions"): partial(self._generate, kind="chat"),
            ("POST", "/v1/completions"): partial(self._generate, kind="completion"),
            ("POST", "/v1/embeddings"): partial(self._generate, kind="embeddings"),
            ("GET", "/v1/models"): lambda _r, _b: self._models_body,
            ("GET", "/healthz"): lambda _r, _b: _HEALTH,
            ("POST", "/_fake/faults"): self._set_faults,
            ("GET", "/_fake/faults"): lambda _r, _b: _json({"faults": self.faults.pending()}),
            ("DELETE", "/_fake/faults"): self._clear_faults,
            ("GET", "/_fake/stats"): lambda _r, _b: _json(self.snapshot()),
            ("POST", "/_fake/reset"): self._reset,
        }
        self._paths = {path for _, path in self._routes}

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> HttpServer:
        return await HttpServer.start(self, host, port)

    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Serve until cancelled."""
        server = await self.start(host, port)
        try:
            await asyncio.Future()
        finally:
            await server.aclose()

    def snapshot(self) -> dict[str, Any]:
        return {**self.stats.snapshot(), "faults_pending": self.faults.pending()}

    def set_faults(self, faults: Sequence[Fault | dict[str, Any]]) -> None:
        self.faults.set([f if isinstance(f, Fault) else parse_fault(f) for f in faults])

    def reset(self) -> None:
        self.stats.clear()
        self.faults.clear()

    # -- dispatch ----------------------------------------------------------------------------
    def dispatch(self, request: Request) -> Response | Job:
        route = self._routes.get((request.method, request.path))
        body = _loads(request.body) if request.body else None
        if not request.path.startswith("/_fake/"):
            seen = None if body is _MALFORMED else body
            self.stats.request(
                request.method, request.path, request.headers, seen, request.connection
            )
        if route is None:
            if request.path in self._paths:
                return _error(405, f"method {request.method} not allowed on {request.path}")
            return _error(404, f"unknown path {request.path}", code="unknown_url")
        try:
            return route(request, body)
        except RequestError as exc:
            return _error(exc.status, exc.message, exc.param, exc.code)

    def _set_faults(self, _: Request, body: Any) -> Response:
        faults = body.get("faults") if isinstance(body, dict) else None
        if not isinstance(faults, list) or not all(isinstance(f, dict) for f in faults):
            return _error(400, 'expected {"faults": [{"kind": ...}, ...]}', param="faults")
        try:
            self.set_faults(faults)
        except FaultError as exc:
            return _error(400, str(exc), param="faults")
        return _json({"faults": self.faults.pending()})

    def _clear_faults(self, _r: Request, _b: Any) -> Response:
        self.faults.clear()
        return _json({"faults": []})

    def _reset(self, _r: Request, _b: Any) -> Response:
        self.reset()
        return _json({"ok": True})

    def _generate(self, _: Request, body: Any, kind: _Kind) -> Response | Job:
        if body is _MALFORMED:
            raise RequestError(400, "request body is not valid JSON")
        if not isinstance(body, dict):
            raise RequestError(400, "request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise RequestError(400, "model is required", param="model")
        fault = _marker(body, kind) or self.faults.take()
        if fault is not None:
            self.stats.fault(fault.kind)
            if fault.kind in ("status", "reset", "hang"):
                return partial(self._fail, fault)
        if self.config.models and model not in self.config.models:
            message = f"The model `{model}` does not exist or you do not have access to it."
            raise RequestError(404, message, param="model", code="model_not_found")
        rid, created = f"{self._salt}{next(self._ids):06x}", int(time.time())
        if kind == "embeddings":
            payload = embeddings_json(body, model, self.config.embedding_dims)
            return self._reply(Response(200, payload), fault, 0)
        words = self.config.reply_words
        if kind == "chat":
            plan = plan_chat(body, model, words, self.config.judge)
            rid = f"chatcmpl-{rid}"
            if plan.stream:
                return partial(self._stream, chat_events(plan, rid, created), fault)
            return self._reply(Response(200, chat_json(plan, rid, created)), fault, _steps(plan))
        plan = plan_completion(body, model, words)
        rid = f"cmpl-{rid}"
        if plan.stream:
            return partial(self._stream, completion_events(plan, rid, created), fault)
        return self._reply(Response(200, completion_json(plan, rid, created)), fault, _steps(plan))

    # -- timed answers -----------------------------------------------------------------------
    def _reply(self, response: Response, fault: Fault | None, steps: int) -> Response | Job:
        if fault is None and self._latency == 0 and (steps == 0 or not self.config.tokens_per_s):
            return response
        return partial(self._reply_later, response, fault, steps)

    def _first_byte_delay(self, fault: Fault | None) -> float:
        extra = fault.ms / 1000 if fault is not None and fault.kind == "slow_first_byte" else 0
        return self._latency + extra

    async def _reply_later(
        self, response: Response, fault: Fault | None, steps: int, conn: Connection
    ) -> None:
        tps = self.config.tokens_per_s
        delay = self._first_byte_delay(fault) + (steps / tps if tps else 0)
        if not await conn.sleep(delay):
            self.stats.disconnect()
            return
        if fault is not None and fault.kind in ("cut", "stall"):
            conn.write(head(200, len(response.body), "application/json", b"", False))
            if fault.kind == "cut":
                conn.write(response.body[: len(response.body) // 2])
                conn.cut()
                return
            if not await conn.sleep(fault.ms / 1000):
                self.stats.disconnect()
                return
            conn.write(response.body)
            return
        conn.send(response)

    async def _stream(self, events: list[Event], fault: Fault | None, conn: Connection) -> None:
        if not await conn.sleep(self._first_byte_delay(fault)):
            self.stats.disconnect()
            return
        loop = asyncio.get_running_loop()
        interval = 1 / self.config.tokens_per_s if self.config.tokens_per_s else 0.0
        start, paced = loop.time(), 0
        cut = fault.after_chunks if fault is not None and fault.kind == "cut" else None
        stall = fault.after_chunks if fault is not None and fault.kind == "stall" else None
        conn.start_stream()
        for sent, (event, is_paced) in enumerate(events):
            if sent == cut:
                break
            if sent == stall and fault is not None:
                start += fault.ms / 1000
                await conn.sleep(fault.ms / 1000)
            if is_paced and interval:
                paced += 1
                await conn.sleep(start + paced * interval - loop.time())
            if conn.closed:
                self.stats.disconnect()
                return
            conn.send_chunk(event)
            await conn.drain()
        if cut is not None:
            conn.cut()
        elif conn.closed:
            self.stats.disconnect()
        else:
            conn.end_stream()

    async def _fail(self, fault: Fault, conn: Connection) -> None:
        if not await conn.sleep(self._latency):
            self.stats.disconnect()
            return
        if fault.kind == "reset":
            conn.reset()
        elif fault.kind == "hang":
            await conn.lost
            self.stats.disconnect()
        else:
            retry = (
                fault.retry_after
                if fault.retry_after is not None
                else (1 if fault.status == 429 else None)
            )
            headers = () if retry is None else (("retry-after", f"{retry:g}"),)
            message = f"injected fault: upstream returned {fault.status}"
            body = orjson.dumps(error_body(fault.status, message))
            conn.send(Response(fault.status, body, headers))


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _MALFORMED


def _steps(plan: Plan) -> int:
    return max(len(c.pieces) for c in plan.choices)


def _marker(body: dict[str, Any], kind: _Kind) -> Fault | None:
    if kind == "completion":
        prompt = body.get("prompt")
        text = prompt if isinstance(prompt, str) else ""
    else:
        messages = body.get("messages") if kind == "chat" else None
        users = [m for m in messages or () if isinstance(m, dict) and m.get("role") == "user"]
        text = content_text(users[-1].get("content")) if users else ""
    try:
        return _parse_marker(text)
    except FaultError as exc:
        raise RequestError(
            400, str(exc), param="prompt" if kind == "completion" else "messages"
        ) from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="effgate fake-upstream", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True, help="0 picks a free port")
    p.add_argument("--models", default="", help="comma-separated; others get 404")
    p.add_argument("--latency-ms", type=float, default=0.0, help="delay before the first byte")
    p.add_argument("--tokens-per-s", type=float, default=0.0, help="stream pacing; 0 = none")
    p.add_argument("--reply-words", type=int, default=16)
    p.add_argument("--embedding-dims", type=int, default=64)
    p.add_argument(
        "--judge",
        default="",
        help="grade grading prompts: comma-separated TEXT=SCORE rules, e.g. 'big says=1,small=0'",
    )
    return p


def judge_rules(text: str) -> tuple[tuple[str, float], ...]:
    """``"a=1,b=0.2"`` -> (("a", 1.0), ("b", 0.2)); ValueError on a malformed rule."""
    rules = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        needle, sep, score = part.rpartition("=")
        value = float(score) if sep and needle else -1.0
        if not 0 <= value <= 1:
            raise ValueError(f"--judge rule {part!r} is not TEXT=SCORE with SCORE in [0, 1]")
        rules.append((needle, value))
    return tuple(rules)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        config = FakeConfig(
            models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
            latency_ms=args.latency_ms,
            tokens_per_s=args.tokens_per_s,
            reply_words=args.reply_words,
            embedding_dims=args.embedding_dims,
            judge=judge_rules(args.judge),
        )
    except ValueError as exc:
        print(f"effgate fake-upstream: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        server = await FakeUpstream(config).start(args.host, args.port)
        print(f"fake-upstream listening on http://{args.host}:{server.port}/v1", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.aclose()

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(run())
    return 0
