"""Prompt token estimates: the exact count near a context window runs off the event loop."""

from __future__ import annotations

import threading
from typing import Any

import anyio

from gateway.tokens import COUNT_THREADS, TokenCounter, estimate


class _Encoding:
    """A stand-in encoding: a token per three characters; notes the thread it ran on."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def encode(self, text: str, disallowed_special: Any = ()) -> list[int]:
        self.threads.append(threading.get_ident())
        return [0] * (len(text) // 3)


def test_an_exact_count_runs_in_a_worker_thread_and_a_far_one_is_not_made() -> None:
    enc = _Encoding()
    counter = TokenCounter(enc)
    messages = [{"role": "user", "content": "..."}]
    framing = 4 * len(messages) + 3

    async def main() -> tuple[int, int, int]:
        near = await counter.estimate_prompt_threaded("x" * 30000, messages, exact_above=10000)
        far = await counter.estimate_prompt_threaded("x" * 3000, messages, exact_above=10000)
        return threading.get_ident(), near, far

    loop_thread, near, far = anyio.run(main)
    # near the window (7,500 estimated tokens against 10,000): counted exactly, in a worker
    assert near == 10000 + framing
    assert len(enc.threads) == 1 and enc.threads[0] != loop_thread
    # far below it: the estimate, nothing encoded
    assert far == estimate("x" * 3000) + framing
    assert counter.count("") == 0 and len(enc.threads) == 1

    # the blocking form (offline tools, benchmarks) gives the same, counting on its thread
    assert counter.estimate_prompt("x" * 30000, messages, exact_above=10000) == near
    assert enc.threads[-1] == threading.get_ident()
    assert counter.estimate_prompt("x" * 3000, messages, exact_above=10000) == far
    counter.close()


def test_long_texts_are_counted_in_the_counter_s_threads_short_ones_inline() -> None:
    from gateway.tokens import THREAD_ABOVE_CHARS

    enc = _Encoding()
    counter = TokenCounter(enc)

    async def main() -> tuple[int, int, int]:
        short = await counter.count_threaded("y" * THREAD_ABOVE_CHARS)
        long = await counter.count_threaded("y" * (THREAD_ABOVE_CHARS + 3))
        return threading.get_ident(), short, long

    loop_thread, short, long = anyio.run(main)
    assert (short, long) == (THREAD_ABOVE_CHARS // 3, THREAD_ABOVE_CHARS // 3 + 1)
    assert enc.threads[0] == loop_thread != enc.threads[1]
    (name,) = [t.name for t in threading.enumerate() if t.ident == enc.threads[1]]
    assert name.startswith("effgate-tokens")
    counter.close()
    counter.close()  # twice is fine
    assert counter.count("abcdef") == 2  # the blocking count still works after close

    async def after_close() -> tuple[int, int]:
        return threading.get_ident(), await counter.count_threaded("z" * 60_000)

    loop_thread, n = anyio.run(after_close)
    assert n == 20_000 and enc.threads[-1] == loop_thread  # closed: counted in place


def test_a_count_the_closing_pool_cancels_is_made_in_place() -> None:
    """At shutdown the pool drops the counts still queued; their callers, not cancelled
    themselves, get the count made on their own thread instead of a CancelledError."""
    release = threading.Event()

    class _Slow(_Encoding):
        def encode(self, text: str, disallowed_special: Any = ()) -> list[int]:
            if threading.current_thread().name.startswith("effgate-tokens"):
                release.wait(5)
            return super().encode(text, disallowed_special)

    enc = _Slow()
    counter = TokenCounter(enc)

    async def main() -> tuple[int, list[int]]:
        import asyncio

        texts = ["q" * 30_000] * (COUNT_THREADS + 1)  # one more than the pool runs at once
        tasks = [asyncio.ensure_future(counter.count_threaded(t)) for t in texts]
        await asyncio.sleep(0.2)  # the first ones are running, the last is queued
        counter.close()
        release.set()
        return threading.get_ident(), list(await asyncio.gather(*tasks))

    loop_thread, counts = anyio.run(main)
    assert counts == [10_000] * (COUNT_THREADS + 1)
    assert loop_thread in enc.threads  # the queued one, counted in place
