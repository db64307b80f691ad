"""Server-sent events, scanned not parsed: split a byte stream into whole events, read an event's data.

Relays forward only whole events, so a stream that breaks off never leaves a half event in front of the
final error event. Holding back at most one partial event is not buffering: a client cannot use half an
event anyway. Line endings follow the SSE rules (CRLF, LF or CR); a stream that uses CR is passed on with LF,
the form every reader accepts, so the scanners downstream see one kind of boundary.
"""

from __future__ import annotations

import aiohttp

__all__ = ["MAX_EVENT_BYTES", "EventFramer", "EventTooLarge", "event_data"]

MAX_EVENT_BYTES = 8 * 1024 * 1024  # one event (a chunk of tokens) is a few hundred bytes; a whole answer is less


class EventTooLarge(aiohttp.ClientPayloadError):
    """An upstream sent more than :data:`MAX_EVENT_BYTES` without ending an event (no blank line): a broken or
    hostile stream. A payload error, so every relay ends the stream with its error event as for a broken one."""


class EventFramer:
    """Cuts a byte stream at event boundaries (a blank line); holds back at most ``limit`` bytes of a partial
    event."""

    __slots__ = ("_limit", "_rest")

    def __init__(self, limit: int = MAX_EVENT_BYTES) -> None:
        self._rest = b""
        self._limit = limit

    def feed(self, data: bytes) -> bytes:
        """Return every complete event in ``data`` (with what was held back), keeping a trailing partial one.

        :raises EventTooLarge: the partial event held back grew past the limit.
        """
        if not self._rest and data.endswith(b"\n\n") and b"\r" not in data:
            return data  # the common case: whole events, LF endings
        if self._rest:
            if len(self._rest) > self._limit:
                raise EventTooLarge(f"the upstream sent over {self._limit} bytes without ending an event")
            data = self._rest + data
        if b"\r" in data:  # CRLF or CR line endings: LF from here on (a CR at the end may be half a CRLF)
            held = data.endswith(b"\r")
            data = (data[:-1] if held else data).replace(b"\r\n", b"\n").replace(b"\r", b"\n") + (
                b"\r" if held else b""
            )
        end = data.rfind(b"\n\n")
        if end < 0:
            self._rest = data
            return b""
        self._rest = data[end + 2 :]
        return data[: end + 2]

    def close(self) -> bytes:
        """The held-back bytes at a clean end of stream (an engine that omits the final blank line)."""
        rest, self._rest = self._rest, b""
        return rest.replace(b"\r", b"\n") if rest.endswith(b"\r") else rest


def event_data(event: bytes) -> bytes | None:
    """The data of one event (LF line endings, as :class:`EventFramer` gives them): its ``data:`` lines joined
    by newlines, comments and other fields ignored; ``None`` when it has no data (a comment, a keep-alive)."""
    if event.startswith(b"data: ") and event.find(b"\n", 6) >= len(event.rstrip(b"\n")):
        return event[6:].rstrip(b"\n")  # the common case: one data line
    values = []
    for line in event.split(b"\n"):
        if line == b"data":
            values.append(b"")
        elif line.startswith(b"data:"):
            value = line[5:]
            values.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(values) if values else None
