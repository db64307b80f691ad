"""OpenAI chat completion chunks → the Anthropic Messages streaming events, in Anthropic's exact order.

``message_start``; then per content block ``content_block_start`` / ``content_block_delta``
(``thinking_delta``, ``text_delta``, ``input_json_delta``) / ``content_block_stop``, blocks strictly one after
another; then ``message_delta`` (stop_reason, stop_sequence, usage) and ``message_stop``. ``ping`` events
are the caller's (they depend on time). Pure: chunks in, encoded events out.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from helexa.translate.anthropic import anthropic_usage, message_id, stop_reason

__all__ = ["AnthropicStream", "event"]

_encoder = msgspec.json.Encoder()


def event(kind: str, payload: dict[str, Any]) -> bytes:
    """One server-sent event in Anthropic's form (``event:`` line + JSON ``data:`` with the same type)."""
    return b"event: " + kind.encode() + b"\ndata: " + _encoder.encode({"type": kind, **payload}) + b"\n\n"


class AnthropicStream:
    """Translates one OpenAI chunk stream into Anthropic events."""

    def __init__(self, model: str, stop_sequences: list[str]) -> None:
        self.model = model
        self.stop_sequences = stop_sequences
        self.id = message_id()
        self._index = -1
        self._kind = ""  # the open block's type: thinking | text | tool_use | ""
        self._tool_blocks: dict[int, int] = {}
        self._stop: tuple[str, str | None] = ("end_turn", None)
        self._usage = anthropic_usage({})
        self.started = False
        self.finished = False

    def start(self) -> bytes:
        """``message_start`` (usage is known only at the end; it comes in ``message_delta``)."""
        self.started = True
        message = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": dict(self._usage),
        }
        return event("message_start", {"message": message})

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        """Events for one ``chat.completion.chunk``."""
        out: list[bytes] = []
        if not self.started:
            out.append(self.start())
        usage = chunk.get("usage")
        if usage:
            self._usage = anthropic_usage(usage)
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                out += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                out.append(self._delta({"type": "thinking_delta", "thinking": delta["reasoning_content"]}))
            if delta.get("content"):
                out += self._open("text", {"type": "text", "text": ""})
                out.append(self._delta({"type": "text_delta", "text": delta["content"]}))
            for call in delta.get("tool_calls") or []:
                out += self._tool_call(call)
            if choice.get("finish_reason"):
                self._stop = stop_reason(choice["finish_reason"], choice, self.stop_sequences)
                out += self._close()
        return b"".join(out)

    def _open(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        if self._kind == kind:
            return []
        out = self._close()
        self._index += 1
        self._kind = kind
        out.append(event("content_block_start", {"index": self._index, "content_block": block}))
        return out

    def _close(self) -> list[bytes]:
        if not self._kind:
            return []
        self._kind = ""
        return [event("content_block_stop", {"index": self._index})]

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return event("content_block_delta", {"index": self._index, "delta": delta})

    def _tool_call(self, call: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        function = call.get("function") or {}
        position = call.get("index", len(self._tool_blocks))
        if position not in self._tool_blocks:
            out += self._close()
            self._index += 1
            self._kind = "tool_use"
            self._tool_blocks[position] = self._index
            block = {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
                "name": function.get("name", ""),
                "input": {},
            }
            out.append(event("content_block_start", {"index": self._index, "content_block": block}))
        if function.get("arguments") and self._tool_blocks[position] == self._index:
            out.append(self._delta({"type": "input_json_delta", "partial_json": function["arguments"]}))
        return out

    def finish(self) -> bytes:
        """``message_delta`` and ``message_stop`` (closing an open block first). Idempotent."""
        if self.finished:
            return b""
        self.finished = True
        out = [] if self.started else [self.start()]
        out += self._close()
        reason, sequence = self._stop
        out.append(
            event("message_delta", {"delta": {"stop_reason": reason, "stop_sequence": sequence}, "usage": self._usage})
        )
        out.append(event("message_stop", {}))
        return b"".join(out)
