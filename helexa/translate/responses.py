"""OpenAI Responses API (stateless) ↔ chat completions, whole and streaming. Pure.

Request: ``instructions`` becomes a system message; ``input`` (a string or items: messages with
``input_text``/``input_image``/``output_text`` parts, ``function_call`` and ``function_call_output``) becomes
chat messages; function ``tools``, ``tool_choice``, ``max_output_tokens``, ``temperature``, ``top_p``,
``parallel_tool_calls`` and ``text.format`` (JSON schema / object) map to their chat names. Nothing is stored:
``previous_response_id`` is refused with a 400 that says to send the conversation in ``input``.

Response: reasoning → a ``reasoning`` item, text → a ``message`` item with one ``output_text`` part, each
tool call → a ``function_call`` item. Streams emit ``response.created``/``in_progress``, per item
``output_item.added`` … ``output_item.done`` with their part/delta/done events in order, then
``response.completed`` (or ``response.incomplete`` when the token limit cut the answer).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec

from helexa.errors import InvalidRequest
from helexa.wire import decode_request_body

__all__ = ["ResponsesRequest", "ResponsesStream", "decode_responses_request", "to_chat_request", "to_response"]

_encoder = msgspec.json.Encoder()


class _Base(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Tolerant of fields helexa does not model."""


class FunctionTool(_Base):
    type: str
    name: str = ""
    description: str = ""
    parameters: dict[str, Any] = {}
    strict: bool | None = None


class ResponsesRequest(_Base):
    """The body of ``POST /v1/responses``."""

    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[FunctionTool] = []
    tool_choice: str | dict[str, Any] | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    parallel_tool_calls: bool | None = None
    stream: bool = False
    previous_response_id: str | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    user: str | None = None


_decoder = msgspec.json.Decoder(ResponsesRequest)
_any = msgspec.json.Decoder()


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def decode_responses_request(body: bytes) -> ResponsesRequest:
    """Validate a Responses request. :raises InvalidRequest: naming the field."""
    if not body:
        raise InvalidRequest("request body is empty; send a JSON object with model and input")
    request = decode_request_body(_decoder, body)
    if request.previous_response_id:
        raise InvalidRequest(
            "previous_response_id: helexa does not store responses; send the whole conversation in input",
            param="previous_response_id",
        )
    for i, tool in enumerate(request.tools):
        if tool.type != "function" or not tool.name:
            raise InvalidRequest(
                f"tools[{i}]: only function tools with a name are supported (got type {tool.type!r})",
                param=f"tools[{i}]",
            )
    return request


def _part_text(part: dict[str, Any], where: str) -> dict[str, Any]:
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": str(part.get("text", ""))}
    if kind == "input_image":
        url = part.get("image_url") or ""
        if not url:
            raise InvalidRequest(f"{where}.image_url: an image URL or data URI is required", param=f"{where}.image_url")
        return {"type": "image_url", "image_url": {"url": url}}
    raise InvalidRequest(f"{where}.type: unsupported content part {kind!r}", param=f"{where}.type")


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise InvalidRequest(
            f"{where}.role: expected user, assistant, system or developer, got {role!r}", param=f"{where}.role"
        )
    content = item.get("content", "")
    if isinstance(content, list):
        parts = [_part_text(p, f"{where}.content[{j}]") for j, p in enumerate(content) if isinstance(p, dict)]
        content = "".join(p["text"] for p in parts) if all(p["type"] == "text" for p in parts) else parts
    elif not isinstance(content, str):
        raise InvalidRequest(f"{where}.content: expected a string or a list of parts", param=f"{where}.content")
    return {"role": "system" if role == "developer" else role, "content": content}


def chat_messages(request: ResponsesRequest) -> list[dict[str, Any]]:
    """The chat ``messages`` for a Responses request's instructions and input."""
    out: list[dict[str, Any]] = []
    if request.instructions:
        out.append({"role": "system", "content": request.instructions})
    if isinstance(request.input, str):
        out.append({"role": "user", "content": request.input})
        return out
    for i, item in enumerate(request.input):
        where = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            out.append(_message(item, where))
        elif kind == "function_call":
            call = {
                "id": item.get("call_id") or item.get("id") or _new_id("call"),
                "type": "function",
                "function": {"name": item.get("name", ""), "arguments": item.get("arguments", "")},
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and not isinstance(last.get("content"), list):
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output", "")
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": item.get("call_id", ""),
                    "content": output if isinstance(output, str) else _encoder.encode(output).decode(),
                }
            )
        elif kind == "reasoning":
            continue
        else:
            raise InvalidRequest(f"{where}.type: unsupported input item {kind!r}", param=f"{where}.type")
    return out


def to_chat_request(request: ResponsesRequest, model: str) -> dict[str, Any]:
    """The chat completion request for ``request``, for ``model`` (the resolved id)."""
    body: dict[str, Any] = {"model": model, "messages": chat_messages(request), "stream": request.stream}
    if request.stream:
        body["stream_options"] = {"include_usage": True}
    if request.max_output_tokens is not None:
        body["max_tokens"] = request.max_output_tokens
    for key in ("temperature", "top_p", "parallel_tool_calls", "user"):
        value = getattr(request, key)
        if value is not None:
            body[key] = value
    if request.tools:
        body["tools"] = [
            {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
            for t in request.tools
        ]
    choice = request.tool_choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        body["tool_choice"] = {"type": "function", "function": {"name": choice.get("name", "")}}
    elif isinstance(choice, str):
        body["tool_choice"] = choice
    fmt = (request.text or {}).get("format") or {}
    if fmt.get("type") == "json_schema":
        schema = {
            "name": fmt.get("name", "response"),
            "schema": fmt.get("schema", {}),
            "strict": fmt.get("strict", False),
        }
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif fmt.get("type") == "json_object":
        body["response_format"] = {"type": "json_object"}
    if request.reasoning is not None:
        body["chat_template_kwargs"] = {"enable_thinking": request.reasoning.get("effort") != "none"}
    return body


def _usage(usage: dict[str, Any]) -> dict[str, Any]:
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def _envelope(request: ResponsesRequest, response_id: str, model: str, status: str) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "model": model,
        "output": [],
        "parallel_tool_calls": request.parallel_tool_calls if request.parallel_tool_calls is not None else True,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "tool_choice": request.tool_choice if request.tool_choice is not None else "auto",
        "tools": [msgspec.to_builtins(t) for t in request.tools],
        "text": request.text or {"format": {"type": "text"}},
        "metadata": request.metadata or {},
        "usage": None,
        "store": False,
    }


def _finish(envelope: dict[str, Any], finish_reason: str | None) -> None:
    if finish_reason == "length":
        envelope["status"] = "incomplete"
        envelope["incomplete_details"] = {"reason": "max_output_tokens"}
    else:
        envelope["status"] = "completed"


def _reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {"type": "reasoning", "id": item_id, "summary": [], "content": [{"type": "reasoning_text", "text": text}]}


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": [part]}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def to_response(chat: dict[str, Any], request: ResponsesRequest, model: str) -> dict[str, Any]:
    """The Responses object for a non-streaming chat completion."""
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    envelope = _envelope(request, _new_id("resp"), model, "completed")
    output = envelope["output"]
    if message.get("reasoning_content"):
        output.append(_reasoning_item(_new_id("rs"), message["reasoning_content"]))
    if message.get("content"):
        output.append(_message_item(_new_id("msg"), message["content"]))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        output.append(
            _call_item(
                _new_id("fc"),
                call.get("id") or _new_id("call"),
                function.get("name", ""),
                function.get("arguments", ""),
            )
        )
    _finish(envelope, choice.get("finish_reason"))
    envelope["usage"] = _usage(chat.get("usage") or {})
    return envelope


class ResponsesStream:
    """Translates one chat chunk stream into Responses streaming events (``event:`` + JSON ``data:``)."""

    def __init__(self, request: ResponsesRequest, model: str) -> None:
        self.envelope = _envelope(request, _new_id("resp"), model, "in_progress")
        self._sequence = 0
        self._open: dict[str, Any] | None = None  # the item being streamed
        self._kind = ""
        self._text = ""
        self._calls: dict[int, dict[str, Any]] = {}
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] = {}
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
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                if self._kind != "reasoning":
                    out += self._begin(
                        "reasoning", {"type": "reasoning", "id": _new_id("rs"), "summary": [], "content": []}
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
                            "id": _new_id("msg"),
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
            item = _call_item(
                _new_id("fc"), call.get("id") or _new_id("call"), function.get("name", ""), "", "in_progress"
            )
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

    def finish(self) -> bytes:
        """Close the open item, then ``response.completed`` (or ``response.incomplete``)."""
        out = [] if self.started else [self.start()]
        out += self._close()
        _finish(self.envelope, self._finish_reason)
        self.envelope["usage"] = _usage(self._usage)
        kind = "response.incomplete" if self.envelope["status"] == "incomplete" else "response.completed"
        out.append(self._event(kind, {"response": self.envelope}))
        return b"".join(out)
