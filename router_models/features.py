"""Request features for the difficulty estimator: cheap, deterministic, numpy only.

A request (OpenAI chat messages) becomes one `Features`: a small dense vector of
structure signals (length, numbers, maths, code, answer form, reasoning load, turns,
tools, language). Topic n-grams were dropped in version 5: under leave-task-out
validation they did not help (docs/estimator.md), and they cost most of the latency.
Version 6: the text features read the user turns (all prompt text where there is no user
turn at all); a system or developer prompt counts only through `has_system` and
`log_system_chars`. A workflow's system prompt is the same on each of its requests and often
long, and the estimator is fitted on prompts without one: read with the user's text, 2,347
characters of house rules made every request look long and hard to it (docs/estimator.md,
"Cold start"). Requests without a system or developer message map as in version 5
(`COMPATIBLE_FEATURE_VERSIONS`). Bump `FEATURE_VERSION` whenever anything here changes what
a request maps to.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FEATURE_VERSION = "6"
# Artifacts fitted under these versions load: version 5 maps every request without a system
# or developer message exactly as 6 does (heads fitted on recorded traffic with system
# prompts are better refitted; the loader says so).
COMPATIBLE_FEATURE_VERSIONS = frozenset({"5", "6"})
# the pattern passes read at most this much text (head and tail); lengths count everything
TEXT_CAP = 6000

# Line-start patterns, unanchored: `_line_matches` tries them only where a multiline "^"
# could match, with re.findall's leftmost, non-overlapping acceptance.
_OPTION = re.compile(rb"\s*\(?[a-j][.):]\s")  # on lowered text
_LIST = re.compile(rb"\s*(?:[-*]|\d+[.)])\s")
_INDENTED = re.compile(rb"(?: {2,}|\t)\S")
_ANCHORED = {p: re.compile(b"^" + p.pattern, re.MULTILINE) for p in (_OPTION, _LIST, _INDENTED)}
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")
_REASONING = frozenset(
    b"calculate compute many much solve prove determine find estimate derive evaluate "
    b"simplify probability total remainder integer equation step steps sum product".split()
)
_KNOWLEDGE = frozenset(b"who when where which whose whom name".split())
_EXPLAIN = frozenset(b"explain why describe discuss compare summarize summarise essay".split())
_WRITE_CODE = frozenset(b"function program implement code python script algorithm".split())
_DIGITS = b"0123456789"
_UPPER = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_HIGH = bytes(range(128, 256))
_PUNCT = b",.;:!?()[]{}\"'-"
# bytes.translate + split finds the runs of [a-z0-9_\x80-\xff]+ (words, in lowered text) and
# of \d+ (numbers), as re.findall would, several times faster
_WORD_TABLE = bytes(
    b if (97 <= b <= 122 or 48 <= b <= 57 or b == 95 or b >= 128) else 32 for b in range(256)
)
_NUMBER_TABLE = bytes(b if 48 <= b <= 57 else 32 for b in range(256))
# r"\\[a-z]+|\$" (on lowered text): every "$", and every backslash before a letter
_LATEX_TABLE = bytes(97 if 97 <= b <= 122 else b for b in range(256))
# r"[a-z,;] [A-Z][a-z]": a-z -> "a", ",;" -> ",", A-Z -> "A"
_CASE_TABLE = bytes(
    97 if 97 <= b <= 122 else 44 if b in b",;" else 65 if 65 <= b <= 90 else b for b in range(256)
)
# Fixed-width patterns counted with bytes.count after mapping each character class to one
# byte: the same leftmost, non-overlapping matches as re.findall on the original pattern.
_OPERATORS = b"=+^*/<>"  # [=+^*/<>]
# r"\d[.,]\d": digits -> "0", "," -> "."; then count "0.0"
_DECIMAL_TABLE = bytes(48 if 48 <= b <= 57 else 46 if b == 44 else b for b in range(256))
# r"[.!?](?:\s|$)": whitespace -> " ", "!?" -> "."; then count ". " plus a final "."
_SENTENCE_TABLE = bytes(
    32 if b in b" \t\n\r\x0b\x0c" else 46 if b in b"!?" else b for b in range(256)
)

DENSE_NAMES: tuple[str, ...] = (
    "log_chars",
    "log_words",
    "log_lines",
    "mean_word_len",
    "digit_frac",
    "upper_frac",
    "non_ascii_frac",
    "cjk_frac",
    "punct_frac",
    "log_numbers",
    "numbers_per_word",
    "log_decimals",
    "log_latex",
    "log_operators",
    "log_code_marks",
    "indented_frac",
    "log_options",
    "has_options",
    "log_list_items",
    "log_questions",
    "ends_question",
    "log_sentences",
    "words_per_sentence",
    "capitalised_per_word",
    "unique_word_frac",
    "log_reasoning_words",
    "knowledge_question",
    "log_explain_words",
    "write_code",
    "short_prompt",
    "n_user_turns",
    "n_assistant_turns",
    "has_system",
    "log_system_chars",
    "has_tools",
    "n_images",
    "n_tool_messages",
)
N_DENSE = len(DENSE_NAMES)


@dataclass(frozen=True, slots=True)
class Features:
    """One request's features: `dense`, a vector of len N_DENSE (see DENSE_NAMES)."""

    dense: npt.NDArray[np.float64]


def _part_text(part: Any) -> str:
    if isinstance(part, str):
        return part
    if isinstance(part, Mapping):
        text = part.get("text")
        if isinstance(text, str):
            return text
    return ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, bytes | bytearray):
        return "\n".join(t for t in (_part_text(p) for p in content) if t)
    return ""


def _count_images(content: Any) -> int:
    if isinstance(content, str) or not isinstance(content, Sequence):
        return 0
    return sum(
        1
        for p in content
        if isinstance(p, Mapping) and p.get("type") in ("image_url", "input_image", "image")
    )


_PROMPT_ROLES = frozenset(("user", "system", "developer"))
_USER_ROLES = frozenset(("user",))


def _roles_text(messages: Iterable[Any], roles: frozenset[str]) -> str:
    """The text of the messages whose role is in ``roles`` (no role: the user's), parts
    joined, one message per line."""
    texts: list[str] = []
    for message in messages:
        if isinstance(message, Mapping) and message.get("role", "user") in roles:
            text = _content_text(message.get("content"))
            if text:
                texts.append(text)
    return "\n".join(texts)


def prompt_text(messages: Iterable[Any]) -> str:
    """The text policy rules match on: user/system/developer text, parts joined (the
    estimator's text features read `user_text` since feature version 6)."""
    return _roles_text(messages, _PROMPT_ROLES)


def user_text(messages: Iterable[Any]) -> str:
    """The user turns' text (a message without a role is the user's), parts joined."""
    return _roles_text(messages, _USER_ROLES)


def _line_starts(raw: bytes) -> list[int]:
    starts, i = [0], raw.find(b"\n")
    while i >= 0:
        starts.append(i + 1)
        i = raw.find(b"\n", i + 1)
    return starts


def _line_matches(pattern: re.Pattern[bytes], raw: bytes, starts: list[int]) -> int:
    """len(re.findall(b"^" + pattern, raw, re.MULTILINE)) when `starts` are raw's line
    starts; the findall itself when lines are short (trying each start costs more then)."""
    if len(starts) * 32 > len(raw):
        return len(_ANCHORED[pattern].findall(raw))
    count, free, match = 0, 0, pattern.match
    for start in starts:
        if start >= free and (m := match(raw, start)) is not None:
            count += 1
            free = m.end()
    return count


def _capitalised(raw: bytes) -> int:
    """len(re.findall(rb"[a-z,;] [A-Z][a-z]", raw)), counted on the class-mapped text.

    In the mapped text a match is "a Aa" or ", Aa". Two matches can only overlap in a chain
    such as "a Aa Aa" (each link's last byte starts the next), and bytes.count takes the
    same leftmost, non-overlapping ones as the regex within one pattern. Across the two
    patterns only a chain after "," or ";" (", Aa Aa ...", L links) differs: the two counts
    give one more than the regex when L is even. Text with such a chain (rare) is scanned
    link by link."""
    mapped = raw.translate(_CASE_TABLE)
    if b", Aa Aa" not in mapped:
        return mapped.count(b"a Aa") + mapped.count(b", Aa")
    count, free, i = 0, 0, mapped.find(b" Aa", 1)
    while i > 0:
        if i - 1 >= free and mapped[i - 1] in (97, 44):
            count += 1
            free = i + 3
        i = mapped.find(b" Aa", i + 1)
    return count


def _code_marks(raw: bytes) -> int:
    """Occurrences of ``` / def / return / { / ;newline / >>> / import / () / ==; a mark
    whose first byte is absent is not searched for (one memchr instead of a full count)."""
    c = raw.count
    return (
        (c(b"```") if b"`" in raw else 0)
        + c(b"def ")
        + c(b"return")
        + (c(b"{") if b"{" in raw else 0)
        + (c(b";\n") if b";" in raw else 0)
        + (c(b">>>") if b">" in raw else 0)
        + c(b"import ")
        + (c(b"()") if b"(" in raw else 0)
        + (c(b"==") if b"=" in raw else 0)
    )


def _log(x: float) -> float:
    return math.log1p(x)


def extract(messages: Sequence[Any]) -> Features:
    """Features of one chat request; never raises on odd message shapes."""
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes):
        messages = []
    dicts = [m for m in messages if isinstance(m, Mapping)]
    # the request's own text: the user turns; a request without one is read whole
    has_user = any(m.get("role", "user") == "user" for m in dicts)
    text = user_text(dicts) if has_user else prompt_text(dicts)
    roles = [m.get("role", "user") for m in dicts]
    system_chars = sum(
        len(_content_text(m.get("content")))
        for m in dicts
        if m.get("role") in ("system", "developer")
    )
    n_images = sum(_count_images(m.get("content")) for m in dicts)
    has_tools = any(m.get("tool_calls") for m in dicts) or "tool" in roles

    sample = text if len(text) <= TEXT_CAP else text[:4000] + "\n" + text[-2000:]
    raw = sample.encode("utf-8", "replace")
    lowered = raw.lower()
    word_bytes = lowered.translate(_WORD_TABLE)
    words = word_bytes.split()

    n_chars = len(text)
    n_words = max(len(words), 1)
    n_sample = max(len(raw), 1)
    n_digits = len(raw) - len(raw.translate(None, _DIGITS))
    n_upper = len(raw) - len(raw.translate(None, _UPPER))
    n_non_ascii = len(raw) - len(raw.translate(None, _HIGH))
    n_punct = len(raw) - len(raw.translate(None, _PUNCT))
    n_numbers = len(raw.translate(_NUMBER_TABLE).split()) if n_digits else 0
    n_lines = text.count("\n") + 1 if text else 0
    ends = raw.translate(_SENTENCE_TABLE)
    n_sentences = ends.count(b". ") + ends.endswith(b".") + 1
    starts = _line_starts(raw)
    n_options = _line_matches(_OPTION, lowered, starts)
    has_latex = b"\\" in raw or b"$" in raw
    distinct = set(words)
    stripped = raw.rstrip()
    dense = np.array(
        (
            _log(n_chars),
            _log(len(words)),
            _log(n_lines),
            (len(word_bytes) - word_bytes.count(b" ")) / n_words,
            n_digits / n_sample,
            n_upper / n_sample,
            min(n_non_ascii / n_sample, 1.0),
            len(_CJK.findall(sample)) / max(len(sample), 1) if n_non_ascii else 0.0,
            n_punct / n_sample,
            _log(n_numbers),
            min(n_numbers / n_words, 2.0),
            _log(raw.translate(_DECIMAL_TABLE).count(b"0.0") if n_digits else 0),
            _log(lowered.count(b"$") + lowered.translate(_LATEX_TABLE).count(b"\\a"))
            if has_latex
            else 0.0,
            _log(len(raw) - len(raw.translate(None, _OPERATORS))),
            _log(_code_marks(raw)),
            _line_matches(_INDENTED, raw, starts) / max(n_lines, 1),
            _log(n_options),
            float(n_options >= 2),
            _log(_line_matches(_LIST, raw, starts)),
            _log(raw.count(b"?")),
            float(stripped.endswith(b"?")),
            _log(n_sentences),
            min(n_words / n_sentences, 200.0) / 10.0,
            _capitalised(raw) / n_words,
            len(distinct) / n_words,
            _log(len(distinct & _REASONING)),
            float(bool(words) and words[0] in _KNOWLEDGE),
            _log(len(distinct & _EXPLAIN)),
            _log(len(distinct & _WRITE_CODE)),
            float(n_words < 12),
            float(roles.count("user")),
            float(roles.count("assistant")),
            float(any(r in ("system", "developer") for r in roles)),
            _log(system_chars),
            float(has_tools),
            float(n_images),
            float(roles.count("tool")),
        ),
        dtype=np.float64,
    )
    return Features(dense=dense)
