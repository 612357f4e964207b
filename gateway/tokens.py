"""Token counting for estimates: tiktoken where the encoding is available offline, else chars/4.

tiktoken fetches its BPE files from the internet on first use; the litellm wheel bundles the
cl100k and o200k files, so we point ``TIKTOKEN_CACHE_DIR`` there (without importing litellm)
and never call out. Counting is done only when an upstream sent no usage, or when a prompt's
rough size is near a context window.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("effgate.tokens")


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

    @classmethod
    def load(cls) -> TokenCounter:
        return cls(lazy=True)

    def _encoding(self) -> Any | None:
        if self._pending:
            self._pending = False
            self._enc = _load_encoding()
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
        play), where being wrong would send a prompt to a model it does not fit.
        """
        framing = 4 * len(messages) + 3
        rough = estimate(text) + framing
        if rough * 4 < exact_above * 3:
            return rough
        return self.count(text) + framing


def estimate(text: str) -> int:
    """A cheap estimate: about four characters a token for English text and code."""
    return (len(text) + 3) // 4
