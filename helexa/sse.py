"""Server-sent events, scanned not parsed: split a byte stream into whole events, nothing more.

Relays forward only whole events, so a stream that breaks off never leaves a half event in front of the
final error event. Holding back at most one partial event is not buffering: a client cannot use half an
event anyway.
"""

from __future__ import annotations

__all__ = ["EventFramer"]


class EventFramer:
    """Cuts a byte stream at event boundaries (a blank line, ``\\n\\n``)."""

    __slots__ = ("_rest",)

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> bytes:
        """Return every complete event in ``data`` (with what was held back), keeping a trailing partial one."""
        if self._rest:
            data = self._rest + data
        end = data.rfind(b"\n\n")
        if end < 0:
            self._rest = data
            return b""
        self._rest = data[end + 2 :]
        return data[: end + 2]

    def close(self) -> bytes:
        """The held-back bytes at a clean end of stream (an engine that omits the final blank line)."""
        rest, self._rest = self._rest, b""
        return rest
