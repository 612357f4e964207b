"""The translate tables and counts find exactly what the reference regexes find, on any bytes."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from router_models.features import (
    _DECIMAL_TABLE,
    _INDENTED,
    _LATEX_TABLE,
    _LIST,
    _NUMBER_TABLE,
    _OPERATORS,
    _OPTION,
    _SENTENCE_TABLE,
    _WORD_TABLE,
    _capitalised,
    _code_marks,
    _line_matches,
    _line_starts,
)

WORD = re.compile(rb"[a-z0-9_\x80-\xff]+")
NUMBER = re.compile(rb"\d+")
DECIMAL = re.compile(rb"\d[.,]\d")
OPERATOR = re.compile(rb"[=+^*/<>]")
SENTENCE = re.compile(rb"[.!?](?:\s|$)")
CAPITALISED = re.compile(rb"[a-z,;] [A-Z][a-z]")
LATEX = re.compile(rb"\\[a-z]+|\$")
LINE_PATTERNS = {
    _OPTION: re.compile(rb"^\s*\(?[a-j][.):]\s", re.MULTILINE),
    _LIST: re.compile(rb"^\s*(?:[-*]|\d+[.)])\s", re.MULTILINE),
    _INDENTED: re.compile(rb"^(?: {2,}|\t)\S", re.MULTILINE),
}
CODE_MARKS = (b"```", b"def ", b"return", b"{", b";\n", b">>>", b"import ", b"()", b"==")
# bytes that make the patterns fire, so short random strings hit the edge cases often
PUNCTUATED = st.binary(max_size=400) | st.lists(
    st.sampled_from(
        [b"1", b"9", b".", b",", b";", b"!", b"?", b" ", b"\n", b"\t", b"\x0b", b"=", b"*"]
        + [b"a", b"z", b"A", b"Q", b"\xff", b" Ab", b"x Yz", b"\\", b"$", b"(", b")", b"-"]
        + [b"a)", b"(b.", b"12.", b"  ", b"\n  ", b"\n\n", b"\r", b", Ab", b"; Cd Ef"]
        + list(CODE_MARKS)
    ),
    max_size=60,
).map(b"".join)


@given(st.binary(max_size=400))
def test_word_runs_match_the_regex(raw: bytes) -> None:
    lowered = raw.lower()
    assert lowered.translate(_WORD_TABLE).split() == WORD.findall(lowered)


@given(st.binary(max_size=400))
def test_number_runs_match_the_regex(raw: bytes) -> None:
    assert len(raw.translate(_NUMBER_TABLE).split()) == len(NUMBER.findall(raw))


@given(PUNCTUATED)
def test_decimal_count_matches_the_regex(raw: bytes) -> None:
    assert raw.translate(_DECIMAL_TABLE).count(b"0.0") == len(DECIMAL.findall(raw))


@given(PUNCTUATED)
def test_sentence_count_matches_the_regex(raw: bytes) -> None:
    ends = raw.translate(_SENTENCE_TABLE)
    assert ends.count(b". ") + ends.endswith(b".") == len(SENTENCE.findall(raw))


@given(PUNCTUATED)
def test_operator_and_code_mark_counts_match(raw: bytes) -> None:
    assert len(raw) - len(raw.translate(None, _OPERATORS)) == len(OPERATOR.findall(raw))
    assert _code_marks(raw) == sum(raw.count(mark) for mark in CODE_MARKS)


@given(PUNCTUATED)
def test_capitalised_count_matches_the_regex(raw: bytes) -> None:
    assert _capitalised(raw) == len(CAPITALISED.findall(raw))


def test_capitalised_chains_count_as_the_regex_does() -> None:
    """Two-letter capitalised words chain matches ("a Bc Dd": the second shares a byte with
    the first); the regex counts every other link, also when a chain starts after , or ;."""
    for text in (
        b"said Mr Jo Smith",
        b"said, Mr Jo Smith and Al Bo Cy Do",
        b"one; Ab Cd Ef Gh",
        b"x, Ab Cd",
        b"x, Ab",
        b", Ab Cd, Ef Gh Ij",
        b"Ab Cd Ef",
    ):
        assert _capitalised(text) == len(CAPITALISED.findall(text)), text


@given(PUNCTUATED)
def test_latex_count_matches_the_regex(raw: bytes) -> None:
    lowered = raw.lower()
    fast = lowered.count(b"$") + lowered.translate(_LATEX_TABLE).count(b"\\a")
    assert fast == len(LATEX.findall(lowered))


@given(PUNCTUATED, st.integers(min_value=0, max_value=30))
def test_line_start_counts_match_the_multiline_regexes(raw: bytes, padding: int) -> None:
    # padding with one long line exercises both paths (per-line matching and findall)
    for text in (raw, raw + b"x" * (padding * 40)):
        lowered = text.lower()
        starts = _line_starts(text)
        assert starts == [0] + [i + 1 for i, b in enumerate(text) if b == 10]
        for pattern, reference in LINE_PATTERNS.items():
            assert _line_matches(pattern, lowered, starts) == len(reference.findall(lowered))
