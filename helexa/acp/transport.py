"""ACP's stdio framing — one JSON-RPC message per line — that answers malformed input instead of dropping it.

The ``agent-client-protocol`` package does the JSON-RPC (requests, responses, notifications, method dispatch,
parameter validation); this transport only cuts lines and decodes them. A line that is not JSON gets a
``-32700`` parse error, a value that is not a JSON-RPC message gets ``-32600``, a line longer than ``limit``
bytes is skipped and answered ``-32600`` — each with ``id: null``, as JSON-RPC 2.0 says — and the agent keeps
reading. It satisfies the package's ``Transport`` protocol (``send``, ``receive``, ``close``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

__all__ = ["LineTransport", "problem"]

log = logging.getLogger("helexa.acp")
_TOO_LONG = object()


def problem(message: Any) -> tuple[int, str] | None:
    """Why a decoded line is not a JSON-RPC 2.0 message: ``(code, message)``; ``None`` when it is one."""
    if not isinstance(message, dict):
        return -32600, "Invalid request: a JSON-RPC message is a JSON object"
    if "id" in message and (isinstance(message["id"], bool) or not isinstance(message["id"], str | int | None)):
        return -32600, "Invalid request: id must be a string, a number or null"
    if "method" in message:
        if not isinstance(message["method"], str):
            return -32600, "Invalid request: method must be a string"
        return None
    if "id" in message and ("result" in message or "error" in message):
        return None  # a response to one of our requests
    return -32600, "Invalid request: neither a request, a notification nor a response"


class LineTransport:
    """Newline-delimited JSON over an asyncio reader and writer (the agent's stdin and stdout)."""

    def __init__(self, reader: asyncio.StreamReader, writer: Any, limit: int) -> None:
        """``writer``: an ``asyncio.StreamWriter``, or anything with ``write``, async ``drain`` and ``close``."""
        self.reader = reader
        self.writer = writer
        self.limit = limit
        self._lock = asyncio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        """Write one message as a line."""
        data = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        async with self._lock:
            self.writer.write(data)
            await self.writer.drain()

    async def receive(self) -> dict[str, Any] | None:
        """The next well-formed message; ``None`` at the end of input. Malformed lines are answered here."""
        while True:
            line = await self._line()
            if line is None:
                return None
            if line is _TOO_LONG:
                await self._error(-32600, f"Invalid request: a message longer than {self.limit} bytes")
                continue
            assert isinstance(line, bytes)
            if not line.strip():
                continue
            try:
                message = json.loads(line)
            except ValueError as exc:
                await self._error(-32700, f"Parse error: {exc}")
                continue
            if (reason := problem(message)) is not None:
                given = message.get("id") if isinstance(message, dict) else None
                usable = isinstance(given, str | int) and not isinstance(given, bool)
                await self._error(*reason, answer_id=given if usable else None)
                continue
            return message

    async def close(self) -> None:
        """Close the output."""
        self.writer.close()

    async def _line(self) -> bytes | object | None:
        too_long = False
        while True:
            try:
                line = await self.reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:  # the end of input
                return _TOO_LONG if too_long else (exc.partial or None)
            except asyncio.LimitOverrunError as exc:
                await self.reader.readexactly(exc.consumed)  # drop what was read, look for the line's end
                too_long = True
                continue
            return _TOO_LONG if too_long else line

    async def _error(self, code: int, message: str, answer_id: Any = None) -> None:
        log.warning("ACP input refused: %s", message)
        await self.send({"jsonrpc": "2.0", "id": answer_id, "error": {"code": code, "message": message}})
