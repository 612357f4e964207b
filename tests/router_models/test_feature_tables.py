"""The translate tables find exactly the runs the reference regexes find, on any bytes."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from router_models.features import _NUMBER_TABLE, _WORD_TABLE

WORD = re.compile(rb"[a-z0-9_\x80-\xff]+")
NUMBER = re.compile(rb"\d+")


@given(st.binary(max_size=400))
def test_word_runs_match_the_regex(raw: bytes) -> None:
    lowered = raw.lower()
    assert lowered.translate(_WORD_TABLE).split() == WORD.findall(lowered)


@given(st.binary(max_size=400))
def test_number_runs_match_the_regex(raw: bytes) -> None:
    assert len(raw.translate(_NUMBER_TABLE).split()) == len(NUMBER.findall(raw))
