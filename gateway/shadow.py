"""Shadow evaluation: labels for the router from the deployment's own traffic.

A route's ``shadow`` block (docs/policies.md) samples a share of its requests. For a sampled
request, once the client has its whole answer, ``Evaluator.submit`` queues a job that runs
entirely in the background:

1. reserve the job's worst-case cost against the route's daily evaluation budget (shared
   across replicas through the KV store); over budget, the job is skipped and counted;
2. send the same conversation, not streamed and with output capped, to each comparison
   model (default: the route's reference model; the served model itself is skipped);
3. ask the judge model to grade the served answer and the shadow answers against the
   rubric, in a shuffled order, as one JSON object ``{"A": 0.8, "B": 0.1}``;
4. write one ``label`` record per graded answer (served and shadow models), feed the
   calibration series, count the spend in ``effgate_evaluation_cost_usd_total`` (never in
   the served cost or savings), and settle the budget to the real cost.

Nothing here can reach the client: the job starts after the response is complete, holds no
reference the response needs, and every failure (a shadow model's error, a judge's error, a
grade that cannot be parsed, a full queue) is counted in ``effgate_evaluations_total`` by
result and logged at most once per 10 s.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from gateway.accounting import Usage, cost_usd, usage_from
from gateway.errors import UpstreamError
from gateway.kv import KV
from gateway.metrics import Metrics
from gateway.records import RecordLog, iso
from gateway.tokens import TokenCounter
from gateway.upstreams.base import Upstream
from policies.compiled import ModelEntry, ShadowEntry

log = logging.getLogger("effgate.shadow")

Result = Literal[
    "ok", "budget", "dropped", "shadow_error", "judge_error", "unparseable", "no_answer"
]
RESULTS: tuple[Result, ...] = (
    "ok",
    "budget",
    "dropped",
    "shadow_error",
    "judge_error",
    "unparseable",
    "no_answer",
)
CONVERSATION_CHARS = 24_000  # of the conversation shown to the judge (head and tail)
ANSWER_CHARS = 8_000  # of each answer shown to the judge
JUDGE_MAX_TOKENS = 200
BUDGET_TTL_S = 2 * 86_400
MAX_PENDING_BYTES = 16 * 1024 * 1024  # request bodies held by queued jobs, all routes
_GRADES = re.compile(r"\{[^{}]*\}")
_LETTERS = "ABCDEFGHIJ"


@dataclass(slots=True)
class Job:
    """One sampled request, everything the evaluation needs, copied off the exchange."""

    request_id: str
    route: str
    served: ModelEntry
    shadow: ShadowEntry
    body: dict[str, Any]
    answer: str
    prompt_tokens: int
    predicted: Mapping[str, float]  # P(acceptable) per candidate, as the decision saw it
    size: int


def answer_from_json(obj: Any) -> str:
    """The first choice's text (and tool calls, as JSON) of a chat completion object."""
    if not isinstance(obj, dict):
        return ""
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    msg = choices[0].get("message")
    if not isinstance(msg, dict):
        return ""
    text = msg.get("content")
    out = text if isinstance(text, str) else ""
    calls = msg.get("tool_calls")
    if calls:
        out += ("\n" if out else "") + "tool calls: " + orjson.dumps(calls).decode()
    return out


def answer_from_events(events: Iterable[bytes]) -> str:
    """The first choice's streamed text (and tool call argument fragments) from SSE data."""
    parts: list[str] = []
    for data in events:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        choices = obj.get("choices") if isinstance(obj, dict) else None
        if not isinstance(choices, list):
            continue
        for c in choices:
            if not isinstance(c, dict) or c.get("index", 0) != 0:
                continue
            delta = c.get("delta")
            if not isinstance(delta, dict):
                continue
            if isinstance(delta.get("content"), str):
                parts.append(delta["content"])
            for call in delta.get("tool_calls") or ():
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict):
                    parts.append(str(fn.get("name") or "") + str(fn.get("arguments") or ""))
    return "".join(parts)


def _clip(text: str, cap: int) -> str:
    if len(text) <= cap:
        return text
    half = cap // 2
    return text[:half] + "\n[...]\n" + text[-half:]


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text") or "") if isinstance(p, dict) else "" for p in content
        ).strip()
    return ""


def judge_messages(
    rubric: str, messages: list[Any], answers: Mapping[str, str]
) -> list[dict[str, str]]:
    """The judge's prompt: the rubric, the conversation, and the answers by letter."""
    lines = []
    for m in messages:
        if isinstance(m, dict):
            lines.append(f"[{m.get('role', 'user')}]: {_message_text(m.get('content'))}")
    conversation = _clip("\n".join(lines), CONVERSATION_CHARS)
    shown = "\n".join(
        f'<answer id="{k}">\n{_clip(v, ANSWER_CHARS)}\n</answer>' for k, v in answers.items()
    )
    ids = ", ".join(f'"{k}": <score>' for k in answers)
    system = (
        "You grade answers to a conversation for an evaluation. "
        + rubric
        + f"\nReply with one JSON object and nothing else: {{{ids}}}, each score a number "
        "between 0 and 1."
    )
    user = f"<conversation>\n{conversation}\n</conversation>\n\n{shown}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def parse_grades(text: str, ids: Iterable[str]) -> dict[str, float] | None:
    """The judge's grades by answer id; None unless every id has a number in [0, 1]."""
    wanted = list(ids)
    for match in _GRADES.finditer(text):
        try:
            obj = orjson.loads(match.group(0))
        except orjson.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        grades: dict[str, float] = {}
        for k in wanted:
            v = obj.get(k)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
                break
            grades[k] = float(v)
        else:
            return grades
    return None


class Evaluator:
    """Runs shadow evaluations in the background, bounded per route and in bytes."""

    def __init__(
        self,
        *,
        upstream: Callable[[str], Upstream],
        metrics: Metrics,
        records: RecordLog,
        kv: KV,
        tokens: TokenCounter,
        observe: Callable[[str, str, str, float, float], None],
        rng: random.Random | None = None,
    ) -> None:
        self._upstream = upstream
        self._metrics = metrics
        self._records = records
        self._kv = kv
        self._tokens = tokens
        self._observe = observe  # (route, model, source, predicted, observed)
        self._rng = rng or random.Random()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: dict[str, int] = {}
        self._pending_bytes = 0
        self._logged_at = -10.0

    def sampled(self, shadow: ShadowEntry | None) -> bool:
        """Draw whether one request of a route with this shadow block is evaluated."""
        return shadow is not None and self._rng.random() < shadow.sample

    def submit(self, job: Job) -> None:
        """Start ``job`` unless its route's queue or the byte bound is full (then counted)."""
        if not job.answer:
            self._count(job.route, "no_answer")
            return
        queued = self._pending.get(job.route, 0)
        if queued >= job.shadow.max_pending or self._pending_bytes + job.size > MAX_PENDING_BYTES:
            self._count(job.route, "dropped")
            return
        self._pending[job.route] = queued + 1
        self._pending_bytes += job.size
        task = asyncio.get_running_loop().create_task(self._run(job), name="effgate-shadow")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def _run(self, job: Job) -> None:
        try:
            result = await self._evaluate(job)
        except Exception as exc:  # a bug here must never surface anywhere but the counters
            self._warn("shadow evaluation failed: %s", type(exc).__name__)
            result = "judge_error"
        finally:
            self._pending[job.route] -= 1
            self._pending_bytes -= job.size
        self._count(job.route, result)

    async def _evaluate(self, job: Job) -> Result:
        sh = job.shadow
        others = [m for m in sh.models if m.id != job.served.id]
        reserve = self._worst_case(job, others)
        key = f"eval:{job.route}:{time.strftime('%Y-%m-%d', time.gmtime())}"
        if await self._kv.add(key, reserve, BUDGET_TTL_S) > sh.daily_usd:
            await self._kv.add(key, -reserve, BUDGET_TTL_S)
            return "budget"
        spent = 0.0
        try:
            answers: dict[str, str] = {job.served.id: job.answer}
            for m in others:
                try:
                    text, usage = await self._ask(m, self._shadow_body(job, m), job, "shadow")
                except UpstreamError as exc:
                    self._warn("shadow model %s failed: %s", m.id, exc.kind)
                    return "shadow_error"
                spent += self._spend(job.route, m, usage, "shadow")
                answers[m.id] = text
            order = list(answers)
            self._rng.shuffle(order)
            by_letter = {_LETTERS[i]: order[i] for i in range(len(order))}
            prompt = judge_messages(
                sh.rubric,
                job.body.get("messages") or [],
                {k: answers[v] for k, v in by_letter.items()},
            )
            body = {
                "model": sh.judge.upstream_model,
                "messages": prompt,
                "temperature": 0,
                "max_tokens": JUDGE_MAX_TOKENS,
                "stream": False,
            }
            try:
                verdict, usage = await self._ask(sh.judge, body, job, "judge")
            except UpstreamError as exc:
                self._warn("judge %s failed: %s", sh.judge.id, exc.kind)
                return "judge_error"
            spent += self._spend(job.route, sh.judge, usage, "judge")
            grades = parse_grades(verdict, by_letter)
            if grades is None:
                self._warn("judge %s sent no parseable grades", sh.judge.id)
                return "unparseable"
            now = iso(time.time())
            for letter, model_id in by_letter.items():
                score = grades[letter]
                self._records.emit(
                    {
                        "type": "label",
                        "request_id": job.request_id,
                        "time": now,
                        "route": job.route,
                        "model": model_id,
                        "score": score,
                        "source": "judge",
                        "judge": sh.judge.id,
                        "served": model_id == job.served.id,
                    }
                )
                predicted = job.predicted.get(model_id)
                if predicted is not None:
                    self._observe(job.route, model_id, "judge", predicted, score)
            return "ok"
        finally:
            await self._kv.add(key, spent - reserve, BUDGET_TTL_S)

    def _shadow_body(self, job: Job, m: ModelEntry) -> dict[str, Any]:
        body = {k: v for k, v in job.body.items() if k not in ("stream", "stream_options", "n")}
        body["model"] = m.upstream_model
        cap = job.shadow.max_output_tokens
        asked = body.pop("max_completion_tokens", None) or body.get("max_tokens")
        body["max_tokens"] = min(cap, asked) if isinstance(asked, int) and asked > 0 else cap
        return body

    async def _ask(
        self, m: ModelEntry, body: dict[str, Any], job: Job, role: str
    ) -> tuple[str, Usage]:
        reply = await self._upstream(m.id).complete("/chat/completions", body, m.timeouts.total_s)
        try:
            obj = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            obj = None
        text = answer_from_json(obj)
        usage = usage_from(obj.get("usage")) if isinstance(obj, dict) else None
        if usage is None:
            if role == "shadow":
                prompt = job.prompt_tokens
            else:  # the judge's body holds the request and the answers: off the loop
                prompt = await self._tokens.count_threaded(str(body))
            usage = Usage(prompt, await self._tokens.count_threaded(text), estimated=True)
        return text, usage

    def _spend(self, route: str, m: ModelEntry, usage: Usage, role: str) -> float:
        usd = cost_usd(m, usage)
        self._metrics.evaluation_cost.labels(route, m.id, role).inc(usd)
        return usd

    def _worst_case(self, job: Job, others: list[ModelEntry]) -> float:
        sh = job.shadow
        out = sh.max_output_tokens
        usd = sum(
            (job.prompt_tokens * m.input_usd_per_mtok + out * m.output_usd_per_mtok) / 1e6
            for m in others
        )
        shown = min(job.prompt_tokens, CONVERSATION_CHARS // 2) + (len(others) + 1) * min(
            out, ANSWER_CHARS // 2
        )
        j = sh.judge
        return (
            usd
            + ((shown + 300) * j.input_usd_per_mtok + JUDGE_MAX_TOKENS * j.output_usd_per_mtok)
            / 1e6
        )

    def _count(self, route: str, result: Result) -> None:
        self._metrics.evaluations.labels(route, result).inc()

    def _warn(self, fmt: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._logged_at >= 10.0:
            self._logged_at = now
            log.warning(fmt, *args)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Let running evaluations finish for up to ``timeout_s``, then cancel the rest."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(list(self._tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
