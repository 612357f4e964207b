"""Prompt token estimates: the exact count near a context window runs off the event loop."""

from __future__ import annotations

import threading
from typing import Any

import anyio

from gateway.tokens import TokenCounter, estimate


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
        near = await counter.estimate_prompt_threaded("x" * 3000, messages, exact_above=1000)
        far = await counter.estimate_prompt_threaded("x" * 300, messages, exact_above=1000)
        return threading.get_ident(), near, far

    loop_thread, near, far = anyio.run(main)
    # near the window (750 estimated tokens against 1,000): counted exactly, in a worker
    assert near == 1000 + framing
    assert len(enc.threads) == 1 and enc.threads[0] != loop_thread
    # far below it: the estimate, nothing encoded
    assert far == estimate("x" * 300) + framing
    assert counter.count("") == 0 and len(enc.threads) == 1

    # the blocking form (offline tools, benchmarks) gives the same, counting on its thread
    assert counter.estimate_prompt("x" * 3000, messages, exact_above=1000) == near
    assert enc.threads[-1] == threading.get_ident()
    assert counter.estimate_prompt("x" * 300, messages, exact_above=1000) == far
