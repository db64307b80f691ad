"""Chat completion chunks → OpenAI Responses streaming events, in OpenAI's order. Pure.

``response.created`` / ``response.in_progress``; per output item ``response.output_item.added``, its part and
delta events and ``response.output_item.done``; then ``response.completed`` (or ``response.incomplete`` when
the token limit cut the answer, ``response.failed`` for a failure after the stream started). Every event has a
``sequence_number``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from helexa.translate.responses import (
    ResponsesRequest,
    call_item,
    finish_status,
    new_id,
    response_envelope,
    usage_object,
)
from helexa.translate.responses_tools import ToolSet

__all__ = ["ResponsesStream"]

_encoder = msgspec.json.Encoder()


class ResponsesStream:
    """Translates one chat chunk stream into Responses streaming events (``event:`` + JSON ``data:``)."""

    def __init__(self, request: ResponsesRequest, model: str, tools: ToolSet | None = None) -> None:
        self.tools = tools or ToolSet(request.tools)
        self.envelope = response_envelope(request, new_id("resp"), model, "in_progress")
        self._sequence = 0
        self._open: dict[str, Any] | None = None  # the item being streamed
        self._kind = ""
        self._text = ""
        self._calls: dict[int, dict[str, Any]] = {}
        self._finish_reason: str | None = None
        self.usage_object: dict[str, Any] = {}
        self.started = False

    def _event(self, kind: str, payload: dict[str, Any]) -> bytes:
        data = {"type": kind, "sequence_number": self._sequence, **payload}
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + _encoder.encode(data) + b"\n\n"

    def start(self) -> bytes:
        """``response.created`` and ``response.in_progress``."""
        self.started = True
        return self._event("response.created", {"response": self.envelope}) + self._event(
            "response.in_progress", {"response": self.envelope}
        )

    @property
    def _index(self) -> int:
        return len(self.envelope["output"])

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        item, kind, index, out = self._open, self._kind, self._index, []
        if kind == "reasoning":
            item["content"] = [{"type": "reasoning_text", "text": self._text}]
            out.append(
                self._event(
                    "response.reasoning_text.done",
                    {"item_id": item["id"], "output_index": index, "content_index": 0, "text": self._text},
                )
            )
        elif kind == "message":
            part = {"type": "output_text", "text": self._text, "annotations": [], "logprobs": []}
            out.append(
                self._event(
                    "response.output_text.done",
                    {
                        "item_id": item["id"],
                        "output_index": index,
                        "content_index": 0,
                        "text": self._text,
                        "logprobs": [],
                    },
                )
            )
            out.append(
                self._event(
                    "response.content_part.done",
                    {"item_id": item["id"], "output_index": index, "content_index": 0, "part": part},
                )
            )
            item.update(status="completed", content=[part])
        else:
            item.update(status="completed", arguments=self._text)
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    {"item_id": item["id"], "output_index": index, "arguments": self._text, "name": item["name"]},
                )
            )
        out.append(self._event("response.output_item.done", {"output_index": index, "item": item}))
        self.envelope["output"].append(item)
        self._open, self._kind, self._text = None, "", ""
        return out

    def _begin(self, kind: str, item: dict[str, Any]) -> list[bytes]:
        out = self._close()
        self._open, self._kind, self._text = item, kind, ""
        index = self._index
        out.append(self._event("response.output_item.added", {"output_index": index, "item": item}))
        if kind == "message":
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out.append(
                self._event(
                    "response.content_part.added",
                    {"item_id": item["id"], "output_index": index, "content_index": 0, "part": part},
                )
            )
        return out

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        """Events for one chat completion chunk."""
        out = [] if self.started else [self.start()]
        if chunk.get("usage"):
            self.usage_object = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                if self._kind != "reasoning":
                    out += self._begin(
                        "reasoning", {"type": "reasoning", "id": new_id("rs"), "summary": [], "content": []}
                    )
                self._text += delta["reasoning_content"]
                out.append(
                    self._event(
                        "response.reasoning_text.delta",
                        {
                            "item_id": self._open["id"],
                            "output_index": self._index,
                            "content_index": 0,
                            "delta": delta["reasoning_content"],
                        },
                    )
                )
            if delta.get("content"):
                if self._kind != "message":
                    out += self._begin(
                        "message",
                        {
                            "type": "message",
                            "id": new_id("msg"),
                            "status": "in_progress",
                            "role": "assistant",
                            "content": [],
                        },
                    )
                self._text += delta["content"]
                out.append(
                    self._event(
                        "response.output_text.delta",
                        {
                            "item_id": self._open["id"],
                            "output_index": self._index,
                            "content_index": 0,
                            "delta": delta["content"],
                            "logprobs": [],
                        },
                    )
                )
            for call in delta.get("tool_calls") or []:
                out += self._tool_call(call)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return b"".join(out)

    def _tool_call(self, call: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        function = call.get("function") or {}
        position = call.get("index", len(self._calls))
        if position not in self._calls:
            call_id = call.get("id") or new_id("call")
            item = call_item(self.tools, new_id("fc"), call_id, function.get("name", ""), "", status="in_progress")
            self._calls[position] = item
            out += self._begin("function_call", item)
        if function.get("arguments") and self._open is self._calls[position]:
            self._text += function["arguments"]
            out.append(
                self._event(
                    "response.function_call_arguments.delta",
                    {"item_id": self._open["id"], "output_index": self._index, "delta": function["arguments"]},
                )
            )
        return out

    def fail(self, code: str, message: str) -> bytes:
        """``response.failed`` with the error, for a failure after the stream started."""
        out = [] if self.started else [self.start()]
        self.envelope.update(status="failed", error={"code": code, "message": message})
        out.append(self._event("response.failed", {"response": self.envelope}))
        return b"".join(out)

    def finish(self) -> bytes:
        """Close the open item, then ``response.completed`` (or ``response.incomplete``)."""
        out = [] if self.started else [self.start()]
        out += self._close()
        finish_status(self.envelope, self._finish_reason)
        self.envelope["usage"] = usage_object(self.usage_object)
        kind = "response.incomplete" if self.envelope["status"] == "incomplete" else "response.completed"
        out.append(self._event(kind, {"response": self.envelope}))
        return b"".join(out)
