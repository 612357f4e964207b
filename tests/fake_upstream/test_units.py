"""Fault descriptions, fault markers, JSON-schema sample values and config checks (pure)."""

from __future__ import annotations

import pytest

from fake_upstream import FakeConfig, main
from fake_upstream.faults import Fault, FaultError, parse_fault, parse_marker
from fake_upstream.replies import sample_value


def test_fault_parsing() -> None:
    assert parse_marker("no marker") is None
    assert parse_marker("x [[fault:stall=2,ms=50]] y") == Fault("stall", after_chunks=2, ms=50)
    assert parse_marker("[[fault:slow_first_byte=10]]") == Fault("slow_first_byte", ms=10)
    assert parse_fault({"kind": "status", "status": "429", "retry_after": 2}).retry_after == 2.0
    for bad in ("[[fault:hang=3]]", "[[fault:nope]]", "[[fault:", "[[fault:status=abc]]"):
        with pytest.raises(FaultError):
            parse_marker(bad)
    for spec in ({"kind": "status", "status": 42}, {"kind": "cut", "count": 0}, {"kind": "x"}):
        with pytest.raises(FaultError):
            parse_fault(spec)
    with pytest.raises(FaultError):
        parse_fault({"kind": "stall", "ms": True})
    with pytest.raises(FaultError):
        parse_fault({"kind": "stall", "colour": 1})


def test_sample_values() -> None:
    assert sample_value({}) == "sample value"
    assert sample_value({"type": "object"}) == {}
    assert sample_value({"properties": {"a": {"type": "null"}}, "required": ["a"]}) == {"a": None}
    assert sample_value({"items": {"type": "integer", "minimum": 4}, "minItems": 2}) == [4, 4]
    assert sample_value({"oneOf": [{"type": "boolean"}]}) is True


# -- stats, connections, timing ------------------------------------------------------------


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        FakeConfig(reply_words=0)
    with pytest.raises(ValueError):
        FakeConfig(latency_ms=-1)
    assert main(["--port", "0", "--tokens-per-s", "-3"]) == 2
