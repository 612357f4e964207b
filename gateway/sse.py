"""Incremental server-sent-events framing: split a byte stream into whole events.

Pure and allocation-light: the relay passes each event's original bytes on unchanged and only
looks inside the few it must (usage, errors, ``[DONE]``). Chunk boundaries may fall anywhere.
"""

from __future__ import annotations

_SEPARATORS = (b"\n\n", b"\r\n\r\n", b"\r\r")


class EventSplitter:
    """Feed bytes in, get complete raw events (each with its trailing blank line) out."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" not in buf:  # the common case, one separator: let bytes.split find them
            *whole, self._buf = buf.split(b"\n\n")
            return [e + b"\n\n" for e in whole]
        events: list[bytes] = []
        start = 0
        while True:
            end = -1
            sep_len = 0
            for sep in _SEPARATORS:
                i = buf.find(sep, start)
                if i != -1 and (end == -1 or i < end):
                    end, sep_len = i, len(sep)
            if end == -1:
                break
            events.append(buf[start : end + sep_len])
            start = end + sep_len
        self._buf = buf[start:]
        return events

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet terminated (a cut stream leaves them here)."""
        return self._buf


def event_data(event: bytes) -> bytes:
    """The event's ``data`` field (multi-line data joined with newlines)."""
    if event.startswith(b"data: ") and event.find(b"\n") == len(event) - 2:
        return event[6:-2]  # the common case: one ``data: ...`` line and its blank line
    parts = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts)


def encode_event(data: bytes) -> bytes:
    """One ``data:`` event; ``data`` must not contain newlines (orjson output never does)."""
    return b"data: " + data + b"\n\n"


DONE_EVENT = b"data: [DONE]\n\n"
