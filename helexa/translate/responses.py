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
Streamed answers are :mod:`helexa.translate.responses_stream`'s; tools are :mod:`helexa.translate.responses_tools`'s.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec

from helexa.errors import InvalidRequest
from helexa.translate.responses_tools import FunctionTool, ToolSet
from helexa.wire import ModelId, decode_request_body

__all__ = [
    "ResponsesRequest",
    "ToolSet",
    "call_item",
    "decode_responses_request",
    "finish_status",
    "new_id",
    "response_envelope",
    "to_chat_request",
    "to_response",
    "usage_object",
]

_encoder = msgspec.json.Encoder()


class _Base(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Tolerant of fields helexa does not model."""


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


def new_id(prefix: str) -> str:
    """A new id such as ``resp_…``, ``msg_…``, ``fc_…``."""
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
            call_id = item.get("call_id") or item.get("id") or new_id("call")
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


def usage_object(usage: dict[str, Any]) -> dict[str, Any]:
    """Responses usage for OpenAI chat usage."""
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def response_envelope(request: ResponsesRequest, response_id: str, model: str, status: str) -> dict[str, Any]:
    """The response object around the output items."""
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


def finish_status(envelope: dict[str, Any], finish_reason: str | None) -> None:
    """Set ``status`` (and ``incomplete_details``) from the chat finish reason."""
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


def call_item(
    tools: ToolSet, item_id: str, call_id: str, name: str, arguments: str, *, status: str = "completed"
) -> dict[str, Any]:
    """A ``function_call`` output item (``name`` and ``namespace`` mapped back through ``tools``)."""
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
    envelope = response_envelope(request, new_id("resp"), model, "completed")
    output = envelope["output"]
    if message.get("reasoning_content"):
        output.append(_reasoning_item(new_id("rs"), message["reasoning_content"]))
    if message.get("content"):
        output.append(_message_item(new_id("msg"), message["content"]))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        output.append(
            call_item(
                tools,
                new_id("fc"),
                call.get("id") or new_id("call"),
                function.get("name", ""),
                function.get("arguments", ""),
            )
        )
    finish_status(envelope, choice.get("finish_reason"))
    envelope["usage"] = usage_object(chat.get("usage") or {})
    return envelope
