"""The translate tables and counts find exactly what the reference regexes find, on any bytes."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from router_models.features import (
    _DECIMAL_TABLE,
    _NUMBER_TABLE,
    _OPERATORS,
    _SENTENCE_TABLE,
    _WORD_TABLE,
    _capitalised,
    _code_marks,
)

WORD = re.compile(rb"[a-z0-9_\x80-\xff]+")
NUMBER = re.compile(rb"\d+")
DECIMAL = re.compile(rb"\d[.,]\d")
OPERATOR = re.compile(rb"[=+^*/<>]")
SENTENCE = re.compile(rb"[.!?](?:\s|$)")
CAPITALISED = re.compile(rb"[a-z,;] [A-Z][a-z]")
CODE_MARKS = (b"```", b"def ", b"return", b"{", b";\n", b">>>", b"import ", b"()", b"==")
# bytes that make the patterns fire, so short random strings hit the edge cases often
PUNCTUATED = st.binary(max_size=400) | st.lists(
    st.sampled_from(
        [b"1", b"9", b".", b",", b";", b"!", b"?", b" ", b"\n", b"\t", b"\x0b", b"=", b"*"]
        + [b"a", b"z", b"A", b"Q", b"\xff", b" Ab", b"x Yz"]
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
