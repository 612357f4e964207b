"""SSE framing: the splitter yields the same events however the byte stream is chunked."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given, settings

from gateway.sse import DONE_EVENT, EventSplitter, encode_event, event_data

LINE_ENDINGS = (b"\n", b"\r\n", b"\r")
# field values: anything but CR and LF (which end a line)
VALUE = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@st.composite
def events(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """One event with its own line ending, and the data lines it carries."""
    eol = draw(st.sampled_from(LINE_ENDINGS))
    data = draw(st.lists(VALUE, min_size=1, max_size=4))
    lines = [b"data: " + d for d in data]
    if draw(st.booleans()):
        lines.insert(0, b": keep-alive comment")
    if draw(st.booleans()):
        lines.insert(0, b"event: message")
    if draw(st.booleans()):
        lines.append(b"id: 42")
    return eol.join(lines) + eol + eol, data


def split_at(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    bounds = [0, *points, len(stream)]
    return [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@settings(max_examples=150, deadline=None)
@given(st.lists(events(), min_size=1, max_size=8), st.lists(st.integers(0, 10_000), max_size=20))
def test_same_events_under_any_rechunking(
    evs: list[tuple[bytes, list[bytes]]], cuts: list[int]
) -> None:
    raw = [e for e, _ in evs]
    stream = b"".join(raw)
    splitter = EventSplitter()
    got: list[bytes] = []
    for chunk in split_at(stream, cuts):
        got.extend(splitter.feed(chunk))
    assert got == raw
    assert splitter.pending == b""
    assert [event_data(e) for e in got] == [b"\n".join(d) for _, d in evs]


@settings(max_examples=50, deadline=None)
@given(st.lists(events(), min_size=1, max_size=4), st.integers(1, 200))
def test_a_cut_stream_leaves_the_partial_event_pending(
    evs: list[tuple[bytes, list[bytes]]], keep: int
) -> None:
    stream = b"".join(e for e, _ in evs)
    cut = stream[: max(0, len(stream) - keep)]
    splitter = EventSplitter()
    got = [e for byte in range(len(cut)) for e in splitter.feed(cut[byte : byte + 1])]
    assert b"".join(got) + splitter.pending == cut
    assert all(e in [x for x, _ in evs] for e in got)


@given(VALUE)
def test_encode_event_round_trips(data: bytes) -> None:
    (event,) = EventSplitter().feed(encode_event(data))
    assert event_data(event) == data


def test_done_event_and_data_without_space() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"data:{}\n\nda") == [b"data:{}\n\n"]
    assert splitter.pending == b"da"
    assert splitter.feed(b"ta: [DONE]\n\n") == [DONE_EVENT]
    assert event_data(DONE_EVENT) == b"[DONE]"
    assert event_data(b"data:{}\n\n") == b"{}"
    assert splitter.feed(b"") == []
