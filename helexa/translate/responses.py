"""OpenAI Responses API (stateless) ↔ chat completions, whole and streaming. Pure.

Request: ``instructions`` becomes a system message; ``input`` (a string or items: messages with
``input_text``/``input_image``/``output_text`` parts and roles user/assistant/system/developer,
``function_call`` and ``function_call_output``) becomes chat messages; function ``tools`` (and the function
tools inside a ``namespace`` tool, flattened to ``<namespace>__<name>``), ``tool_choice``,
``max_output_tokens``, ``temperature``, ``top_p``, ``parallel_tool_calls``, ``reasoning.effort`` and
``text.format`` (JSON schema / object) map to their chat names. Hosted tools the fleet cannot run
(``web_search``, ``file_search``, ``code_interpreter``, ``mcp``, …) are left out and reported by
:attr:`ToolSet.dropped`. Fields that only matter to OpenAI's own service (``store``, ``include``,
``prompt_cache_key``, ``client_metadata``, ``service_tier``, …) are accepted and ignored. Nothing is stored:
``previous_response_id`` is refused with a 400 that says to send the conversation in ``input``.

Response: reasoning → a ``reasoning`` item, text → a ``message`` item with one ``output_text`` part, each
tool call → a ``function_call`` item (a flattened namespace tool gets its ``name`` and ``namespace`` back).
Streams emit ``response.created``/``in_progress``, per item
``output_item.added`` … ``output_item.done`` with their part/delta/done events in order, then
``response.completed`` (or ``response.incomplete`` when the token limit cut the answer).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec

from helexa.errors import InvalidRequest
from helexa.wire import ModelId, decode_request_body

__all__ = [
    "ResponsesRequest",
    "ResponsesStream",
    "ToolSet",
    "decode_responses_request",
    "to_chat_request",
    "to_response",
]

_encoder = msgspec.json.Encoder()


class _Base(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Tolerant of fields helexa does not model."""


class FunctionTool(_Base):
    """A tool: ``function`` (name, parameters), ``namespace`` (name, function ``tools``) or a hosted one."""

    type: str
    name: str = ""
    description: str = ""
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    tools: list[dict[str, Any]] = []


_NAMESPACE_SEPARATOR = "__"


class ToolSet:
    """The chat functions a request's tools become, and the way back from a flattened name.

    ``functions``: OpenAI chat tools; ``origin``: flattened name → (namespace, name) for namespace members;
    ``dropped``: the hosted tools left out (their ``type``).
    """

    def __init__(self, tools: list[FunctionTool]) -> None:
        self.functions: list[dict[str, Any]] = []
        self.origin: dict[str, tuple[str, str]] = {}
        self.dropped: list[str] = []
        for i, tool in enumerate(tools):
            if tool.type == "function":
                self._add(tool.name, tool.description, tool.parameters, f"tools[{i}]")
            elif tool.type == "namespace":
                self._namespace(tool, f"tools[{i}]")
            else:
                self.dropped.append(tool.type)

    def _add(self, name: str, description: str, parameters: Any, where: str, namespace: str = "") -> None:
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"{where}.name: a function tool needs a name", param=f"{where}.name")
        if parameters is not None and not isinstance(parameters, dict):
            raise InvalidRequest(f"{where}.parameters: expected an object", param=f"{where}.parameters")
        flat = f"{namespace}{_NAMESPACE_SEPARATOR}{name}" if namespace else name
        if namespace:
            self.origin[flat] = (namespace, name)
        function = {"name": flat, "description": description if isinstance(description, str) else ""}
        function["parameters"] = parameters if parameters is not None else {"type": "object", "properties": {}}
        self.functions.append({"type": "function", "function": function})

    def _namespace(self, tool: FunctionTool, where: str) -> None:
        if not tool.name:
            raise InvalidRequest(f"{where}.name: a namespace tool needs a name", param=f"{where}.name")
        for j, member in enumerate(tool.tools):
            inner = f"{where}.tools[{j}]"
            if member.get("type", "function") != "function":
                self.dropped.append(str(member.get("type")))
                continue
            self._add(member.get("name", ""), member.get("description", ""), member.get("parameters"), inner, tool.name)

    def flat_name(self, name: str, namespace: str | None) -> str:
        """The chat name of a call the client sends back (``namespace`` set for namespace members)."""
        return f"{namespace}{_NAMESPACE_SEPARATOR}{name}" if namespace else name

    def call_fields(self, flat: str) -> dict[str, str]:
        """``name`` (and ``namespace``) of an output ``function_call`` item for the engine's call ``flat``."""
        if flat in self.origin:
            namespace, name = self.origin[flat]
            return {"name": name, "namespace": namespace}
        return {"name": flat}


class ResponsesRequest(_Base):
    """The body of ``POST /v1/responses``."""

    model: ModelId
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
    prompt_cache_key: str = ""


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


# Items that record what hosted tools or OpenAI's own service did: nothing an engine can replay.
_HISTORY_ONLY = ("reasoning", "compaction", "compaction_summary", "item_reference")


def _output_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list) and all(isinstance(p, dict) for p in output):
        texts = [str(p.get("text", "")) for p in output if p.get("type") in ("input_text", "output_text", "text")]
        if len(texts) == len(output):
            return "".join(texts)
    return _encoder.encode(output).decode()


def _call_message(out: list[dict[str, Any]], call: dict[str, Any]) -> None:
    last = out[-1] if out else None
    if last is not None and last["role"] == "assistant" and not isinstance(last.get("content"), list):
        last.setdefault("tool_calls", []).append(call)
    else:
        out.append({"role": "assistant", "content": None, "tool_calls": [call]})


def chat_messages(request: ResponsesRequest, tools: ToolSet | None = None) -> list[dict[str, Any]]:
    """The chat ``messages`` for a Responses request's instructions and input."""
    tools = tools or ToolSet([])
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
        elif kind in ("function_call", "custom_tool_call"):
            name = tools.flat_name(str(item.get("name", "")), item.get("namespace"))
            arguments = item.get("arguments", "") if kind == "function_call" else item.get("input", "")
            call_id = item.get("call_id") or item.get("id") or _new_id("call")
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": str(arguments)}}
            _call_message(out, call)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            content = _output_text(item.get("output", ""))
            out.append({"role": "tool", "tool_call_id": item.get("call_id", ""), "content": content})
        elif kind in _HISTORY_ONLY or kind.endswith(("_call", "_call_output")):
            continue  # hosted tool calls (web_search_call, …) and encrypted state: the engine cannot replay them
        else:
            raise InvalidRequest(f"{where}.type: unsupported input item {kind!r}", param=f"{where}.type")
    return out


_EFFORT = {"minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "high"}


def to_chat_request(request: ResponsesRequest, model: str, tools: ToolSet | None = None) -> dict[str, Any]:
    """The chat completion request for ``request``, for ``model`` (the resolved id)."""
    tools = tools or ToolSet(request.tools)
    body: dict[str, Any] = {"model": model, "messages": chat_messages(request, tools), "stream": request.stream}
    if request.stream:
        body["stream_options"] = {"include_usage": True}
    if request.max_output_tokens is not None:
        body["max_tokens"] = request.max_output_tokens
    for key in ("temperature", "top_p", "parallel_tool_calls", "user"):
        value = getattr(request, key)
        if value is not None:
            body[key] = value
    if tools.functions:
        body["tools"] = tools.functions
        choice = request.tool_choice
        if isinstance(choice, dict) and choice.get("type") == "function":
            name = tools.flat_name(str(choice.get("name", "")), choice.get("namespace"))
            body["tool_choice"] = {"type": "function", "function": {"name": name}}
        elif choice in ("auto", "none", "required"):
            body["tool_choice"] = choice
    else:
        body.pop("parallel_tool_calls", None)
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
        effort = request.reasoning.get("effort")
        body["chat_template_kwargs"] = {"enable_thinking": effort != "none"}
        if effort in _EFFORT:
            body["reasoning_effort"] = _EFFORT[effort]
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


def _call_item(
    tools: ToolSet, item_id: str, call_id: str, name: str, arguments: str, *, status: str = "completed"
) -> dict[str, Any]:
    item = {"type": "function_call", "id": item_id, "call_id": call_id, **tools.call_fields(name)}
    item.update(arguments=arguments, status=status)
    return item


def to_response(
    chat: dict[str, Any], request: ResponsesRequest, model: str, tools: ToolSet | None = None
) -> dict[str, Any]:
    """The Responses object for a non-streaming chat completion."""
    tools = tools or ToolSet(request.tools)
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
                tools,
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

    def __init__(self, request: ResponsesRequest, model: str, tools: ToolSet | None = None) -> None:
        self.tools = tools or ToolSet(request.tools)
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
            call_id = call.get("id") or _new_id("call")
            item = _call_item(self.tools, _new_id("fc"), call_id, function.get("name", ""), "", status="in_progress")
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
        _finish(self.envelope, self._finish_reason)
        self.envelope["usage"] = _usage(self._usage)
        kind = "response.incomplete" if self.envelope["status"] == "incomplete" else "response.completed"
        out.append(self._event(kind, {"response": self.envelope}))
        return b"".join(out)
