"""Anthropic Messages ↔ OpenAI chat completions, both directions, for whole requests and responses. Pure.

Request: ``system`` becomes the first message and ``system`` entries inside ``messages`` stay system
messages in their place (the neuron merges them for engines whose template allows only a leading one); text
and image blocks become OpenAI content parts (base64 images as data URIs); ``tool_use`` blocks become
assistant ``tool_calls``; each ``tool_result`` becomes a ``tool`` message (before the rest of its user turn);
custom ``tools`` become functions (server tools and ``defer_loading`` tools are left out: the engine cannot
run the one and must not see the other) and ``tool_choice`` auto/any/tool/none becomes
auto/required/{function}/none; ``thinking`` enabled/adaptive/disabled switches the chat template's
``enable_thinking``; ``output_config.effort`` becomes ``reasoning_effort`` and ``output_config.format``
(structured outputs, a JSON schema) ``response_format``; a ``clear_thinking`` context
edit keeps reasoning only in the turns it names; ``stop_sequences``, ``temperature``, ``top_p``, ``top_k``
and ``metadata.user_id`` map to their OpenAI (or vLLM/llama.cpp) names.

Response: ``reasoning_content`` becomes a ``thinking`` block, text a ``text`` block, each tool call a
``tool_use`` block; finish reasons map stop → end_turn (or stop_sequence when the engine says which stop
string matched), length → max_tokens, tool_calls → tool_use.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec

from helexa.errors import InvalidRequest
from helexa.translate.anthropic_types import (
    AnthropicRequest,
    CountTokensRequest,
    ImageBlock,
    Message,
    RedactedThinkingBlock,
    TextBlock,
    ThinkingBlock,
    Tool,
    ToolResultBlock,
    ToolUseBlock,
)
from helexa.wire import decode_request_body

__all__ = [
    "STOP_REASONS",
    "anthropic_usage",
    "chat_messages",
    "chat_tools",
    "decode_count_request",
    "decode_request",
    "message_id",
    "offered_tools",
    "stop_reason",
    "to_anthropic_message",
    "to_chat_request",
]

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
_request_decoder = msgspec.json.Decoder(AnthropicRequest)
_count_decoder = msgspec.json.Decoder(CountTokensRequest)
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def message_id() -> str:
    """A new Anthropic-style message id."""
    return f"msg_{uuid.uuid4().hex[:24]}"


def decode_request(body: bytes) -> AnthropicRequest:
    """Validate a Messages request. :raises InvalidRequest: naming the field (400 in Anthropic's envelope)."""
    if not body:
        raise InvalidRequest("request body is empty; send a JSON object with model, max_tokens and messages")
    request = decode_request_body(_request_decoder, body)
    if request.max_tokens < 1:
        raise InvalidRequest("max_tokens: must be at least 1", param="max_tokens")
    _check_tools(request.tools, request.tool_choice)
    return request


def decode_count_request(body: bytes) -> CountTokensRequest:
    """Validate a count_tokens request."""
    if not body:
        raise InvalidRequest("request body is empty; send a JSON object with model and messages")
    request = decode_request_body(_count_decoder, body)
    _check_tools(request.tools, request.tool_choice)
    return request


def _is_server_tool(tool: Tool) -> bool:
    return tool.type not in ("custom", "function", "")


def offered_tools(tools: list[Tool]) -> tuple[list[Tool], list[str]]:
    """The tools the engine is shown, and the names left out: server tools (``web_search_…``: the fleet
    cannot run them) and ``defer_loading`` tools (the client loads them later through its own tool search)."""
    kept, dropped = [], []
    for tool in tools:
        if _is_server_tool(tool) or tool.defer_loading:
            dropped.append(tool.name or tool.type)
        else:
            kept.append(tool)
    return kept, dropped


def _check_tools(tools: list[Tool], choice: Any) -> None:
    for i, tool in enumerate(tools):
        if not _is_server_tool(tool) and not tool.name:
            raise InvalidRequest(f"tools.{i}.name: a custom tool needs a name", param=f"tools.{i}.name")
    if choice is None:
        return
    usable = offered_tools(tools)[0]
    if choice.type == "tool":
        if not choice.name:
            raise InvalidRequest("tool_choice.name: required when tool_choice.type is 'tool'", param="tool_choice.name")
        if choice.name not in {t.name for t in usable}:
            raise InvalidRequest(f"tool_choice.name: tool {choice.name!r} is not in tools", param="tool_choice.name")
    if choice.type in ("any", "tool") and not usable:
        raise InvalidRequest(f"tool_choice: type {choice.type!r} needs custom tools", param="tool_choice")


def _system_text(system: str | list[Any]) -> str:
    if isinstance(system, str):
        return system
    return "\n\n".join(b.text for b in system if isinstance(b, TextBlock))


def _image_part(block: ImageBlock) -> dict[str, Any]:
    source = block.source
    url = source.url if source.type == "url" else f"data:{source.media_type};base64,{source.data}"
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result_text(block: ToolResultBlock) -> str:
    if isinstance(block.content, str):
        text = block.content
    else:
        text = "\n".join(part.text for part in block.content if isinstance(part, TextBlock))
    return f"Error: {text}" if block.is_error else text


def chat_messages(system: str | list[TextBlock], messages: list[Message]) -> list[dict[str, Any]]:
    """The OpenAI ``messages`` for an Anthropic system prompt and conversation."""
    out: list[dict[str, Any]] = []
    text = _system_text(system)
    if text:
        out.append({"role": "system", "content": text})
    for message in messages:
        if message.role == "system":
            out.append({"role": "system", "content": _system_text(message.content)})
        elif isinstance(message.content, str):
            out.append({"role": message.role, "content": message.content})
        elif message.role == "assistant":
            out.append(_assistant_message(message))
        else:
            out.extend(_user_messages(message))
    return out


def _assistant_message(message: Message) -> dict[str, Any]:
    text, reasoning, calls = [], [], []
    for block in message.content:
        if isinstance(block, TextBlock):
            text.append(block.text)
        elif isinstance(block, ThinkingBlock):
            reasoning.append(block.thinking)
        elif isinstance(block, ToolUseBlock):
            arguments = _encoder.encode(block.input).decode()
            calls.append({"id": block.id, "type": "function", "function": {"name": block.name, "arguments": arguments}})
        elif not isinstance(block, RedactedThinkingBlock):
            raise InvalidRequest(f"assistant messages cannot hold {type(block).__name__} blocks", param="messages")
    out: dict[str, Any] = {"role": "assistant", "content": "".join(text) or (None if calls else "")}
    if reasoning:
        out["reasoning_content"] = "".join(reasoning)
    if calls:
        out["tool_calls"] = calls
    return out


def _user_messages(message: Message) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in message.content:
        if isinstance(block, ToolResultBlock):
            out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": _tool_result_text(block)})
        elif isinstance(block, TextBlock):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlock):
            parts.append(_image_part(block))
        else:
            raise InvalidRequest(f"user messages cannot hold {type(block).__name__} blocks", param="messages")
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        out.append({"role": "user", "content": "".join(p["text"] for p in parts) if only_text else parts})
    return out


def chat_tools(tools: list[Tool]) -> list[dict[str, Any]]:
    """The offered Anthropic tool definitions as OpenAI functions (see :func:`offered_tools`)."""
    return [
        {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.input_schema}}
        for t in offered_tools(tools)[0]
    ]


def _thinking_turns_kept(request: AnthropicRequest) -> int | None:
    """How many of the latest assistant turns keep their reasoning (``None``: all), from a clear_thinking edit."""
    if request.context_management is None:
        return None
    for edit in request.context_management.edits:
        if not edit.type.startswith("clear_thinking"):
            continue
        keep = edit.keep
        if isinstance(keep, dict) and keep.get("type") == "thinking_turns" and isinstance(keep.get("value"), int):
            return max(0, keep["value"])
        if keep != "all":
            return 1  # Anthropic's default for this edit: the last assistant turn keeps its thinking
    return None


def _clear_thinking(messages: list[dict[str, Any]], kept: int) -> None:
    turns = [m for m in messages if m["role"] == "assistant" and "reasoning_content" in m]
    for message in turns[: max(0, len(turns) - kept)]:
        del message["reasoning_content"]


_EFFORT = {"low": "low", "medium": "medium", "high": "high", "max": "high", "xhigh": "high"}


def _tool_choice(request: AnthropicRequest | CountTokensRequest) -> Any:
    choice = request.tool_choice
    if choice is None:
        return None
    if choice.type == "tool":
        return {"type": "function", "function": {"name": choice.name}}
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type]


def to_chat_request(request: AnthropicRequest, model: str) -> dict[str, Any]:
    """The OpenAI chat request for ``request``, for ``model`` (the resolved id)."""
    messages = chat_messages(request.system, request.messages)
    kept = _thinking_turns_kept(request)
    if kept is not None:
        _clear_thinking(messages, kept)
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": request.max_tokens,
        "stream": request.stream,
    }
    if request.stream:
        body["stream_options"] = {"include_usage": True}
    for key in ("temperature", "top_p", "top_k"):
        value = getattr(request, key)
        if value is not None:
            body[key] = value
    if request.stop_sequences:
        body["stop"] = request.stop_sequences
    tools = chat_tools(request.tools)
    if tools:
        body["tools"] = tools
    choice = _tool_choice(request) if tools else None
    if choice is not None:
        body["tool_choice"] = choice
        if request.tool_choice is not None and request.tool_choice.disable_parallel_tool_use:
            body["parallel_tool_calls"] = False
    thinking = request.thinking.type != "disabled" if request.thinking is not None else None
    if thinking is not None:
        body["chat_template_kwargs"] = {"enable_thinking": thinking}
    effort = _EFFORT.get((request.output_config and request.output_config.effort) or "")
    if effort and thinking is not False:
        body["reasoning_effort"] = effort
    fmt = (request.output_config and request.output_config.format) or request.output_format
    if fmt is not None and fmt.type == "json_schema":
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt.schema}}
    if request.metadata is not None and request.metadata.user_id:
        body["user"] = request.metadata.user_id
    return body


def stop_reason(finish_reason: str | None, choice: dict[str, Any], stop_sequences: list[str]) -> tuple[str, str | None]:
    """Anthropic ``(stop_reason, stop_sequence)`` for an OpenAI finish reason.

    An engine that reports which stop string matched (vLLM's ``stop_reason``, llama.cpp's ``stopping_word``)
    turns ``stop`` into ``stop_sequence``; others leave it ``end_turn``.
    """
    if finish_reason == "stop" and stop_sequences:
        matched = choice.get("stop_reason") or choice.get("stopping_word")
        if isinstance(matched, str) and matched in stop_sequences:
            return "stop_sequence", matched
    return STOP_REASONS.get(finish_reason or "stop", "end_turn"), None


def tool_input(arguments: str) -> dict[str, Any]:
    """A tool call's JSON arguments as the ``input`` object (``{}`` when empty or not an object)."""
    try:
        value = _decoder.decode(arguments) if arguments else {}
    except msgspec.DecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def to_anthropic_message(chat: dict[str, Any], request: AnthropicRequest, model: str) -> dict[str, Any]:
    """The Anthropic message for a non-streaming OpenAI chat completion."""
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        content.append({"type": "thinking", "thinking": message["reasoning_content"], "signature": ""})
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
                "name": function.get("name", ""),
                "input": tool_input(function.get("arguments", "")),
            }
        )
    reason, sequence = stop_reason(choice.get("finish_reason"), choice, request.stop_sequences)
    return {
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": anthropic_usage(chat.get("usage") or {}),
    }


def anthropic_usage(usage: dict[str, Any]) -> dict[str, int]:
    """Anthropic usage for OpenAI usage: prompt tokens the engine served from its cache (vLLM and llama.cpp
    report ``prompt_tokens_details.cached_tokens``) are ``cache_read_input_tokens``, the rest ``input_tokens``."""
    prompt = usage.get("prompt_tokens") or 0
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") if isinstance(details, dict) else 0
    cached = min(cached, prompt) if isinstance(cached, int) and cached > 0 else 0
    return {
        "input_tokens": prompt - cached,
        "output_tokens": usage.get("completion_tokens") or 0,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    }


def created() -> int:
    """Seconds since the epoch, for generated objects."""
    return int(time.time())
