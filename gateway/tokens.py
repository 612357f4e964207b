"""Token counting for estimates: tiktoken where the encoding is available offline, else chars/4.

tiktoken fetches its BPE files from the internet on first use; the litellm wheel bundles the
cl100k and o200k files, so we point ``TIKTOKEN_CACHE_DIR`` there (without importing litellm)
and never call out. Counting is done only when an upstream sent no usage, or when a prompt's
rough size is near a context window. On the event loop, a long text is counted in the
counter's own worker threads (`count_threaded`), at most COUNT_THREADS at a time.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger("effgate.tokens")

# texts longer than this are counted off the event loop (about 1.6 ms of counting)
THREAD_ABOVE_CHARS = 16_384
# worker threads counting at once: tiktoken releases the GIL, so each takes a core; one core
# is left to the event loop, and counts past these wait in the pool's queue
COUNT_THREADS = max(1, len(os.sched_getaffinity(0)) - 1)


def _bundled_tiktoken_dir() -> Path | None:
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "litellm_core_utils" / "tokenizers"
    return path if path.is_dir() else None


def _load_encoding() -> Any | None:
    if "TIKTOKEN_CACHE_DIR" not in os.environ and (d := _bundled_tiktoken_dir()) is not None:
        os.environ["TIKTOKEN_CACHE_DIR"] = str(d)
    try:
        import tiktoken

        return tiktoken.get_encoding("cl100k_base")
    except Exception as exc:  # no offline encoding file: fall back to the estimate
        log.warning("tiktoken encoding unavailable (%s); estimating tokens as chars/4", exc)
        return None


class TokenCounter:
    """Counts tokens with cl100k (a good approximation for most chat models).

    The encoding (0.4 s and about 40 MB) loads on the first exact count, which most
    processes never need: upstreams send usage, and prompts are rarely near a window.
    """

    def __init__(self, encoding: Any | None = None, *, lazy: bool = False) -> None:
        self._enc = encoding
        self._pending = lazy and encoding is None
        self._loading = threading.Lock()  # exact counts run in worker threads
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    @classmethod
    def load(cls) -> TokenCounter:
        return cls(lazy=True)

    def _encoding(self) -> Any | None:
        if self._pending:
            with self._loading:
                if self._pending:
                    self._enc = _load_encoding()
                    self._pending = False
        return self._enc

    def count(self, text: str) -> int:
        if not text:
            return 0
        enc = self._encoding()
        if enc is None:
            return estimate(text)
        return len(enc.encode(text, disallowed_special=()))

    def estimate_prompt(self, text: str, messages: list[Any], exact_above: int) -> int:
        """Prompt tokens of a chat request: its text plus a few tokens of framing per message.

        Exact counting costs about 0.1 ms per KB, too much for every request, so it runs only
        when the cheap estimate comes near ``exact_above`` (the smallest context window in
        play), where being wrong would send a prompt to a model it does not fit. It runs on
        this thread; the gateway uses `estimate_prompt_threaded`.
        """
        rough, framing = self._rough(text, messages, exact_above)
        return rough if rough is not None else self.count(text) + framing

    async def count_threaded(self, text: str) -> int:
        """`count`, in one of the counter's worker threads when ``text`` is long: tiktoken
        releases the GIL while it encodes (the first count also loads the encoding, 0.4 s),
        and a megabyte takes about 100 ms to count, which on the event loop would hold up
        every other request (`python -m benchmarks.long_prompts`). At most COUNT_THREADS
        count at once; a count whose caller went away (a client that disconnected) before it
        started is dropped, one already running finishes."""
        if len(text) <= THREAD_ABOVE_CHARS or self._closed:
            return self.count(text)  # short, or shutting down: here
        if self._pool is None:
            self._pool = ThreadPoolExecutor(COUNT_THREADS, thread_name_prefix="effgate-tokens")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self.count, text)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # our caller was cancelled
            return self.count(text)  # the pool closed before this count started

    async def estimate_prompt_threaded(
        self, text: str, messages: list[Any], exact_above: int
    ) -> int:
        """`estimate_prompt` with the exact count off the event loop (`count_threaded`)."""
        rough, framing = self._rough(text, messages, exact_above)
        if rough is not None:
            return rough
        return await self.count_threaded(text) + framing

    def close(self) -> None:
        """Stop the worker threads (after the counts already running); counts asked for
        later, or waiting in the queue, run on their caller's thread."""
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    @staticmethod
    def _rough(text: str, messages: list[Any], exact_above: int) -> tuple[int | None, int]:
        """(the cheap estimate, or None where it comes near ``exact_above``; the framing)."""
        framing = 4 * len(messages) + 3
        rough = estimate(text) + framing
        return (rough if rough * 4 < exact_above * 3 else None), framing


def estimate(text: str) -> int:
    """A cheap estimate: about four characters a token for English text and code."""
    return (len(text) + 3) // 4
