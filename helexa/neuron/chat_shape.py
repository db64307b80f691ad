"""What the neuron does to a chat request before its engine sees it: nothing, usually.

Two per-model settings may need the request decoded: ``json_tool_calls`` (the normaliser must know which
tools were offered) and ``system_messages`` (system entries after the first turn, kept, merged, or kept with a
merged retry when the engine refuses them). A request that needs neither is forwarded as the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from helexa.translate.chat import has_late_system_message, merge_system_messages
from helexa.wire.neuron import ModelSpec

__all__ = ["ChatShape", "shape_chat_request"]

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class ChatShape:
    """``body`` to send; ``offered`` tool names for bare-JSON tool calls; ``fallback``, the body with system
    messages merged, to send instead if the engine refuses ``body`` (``auto`` mode)."""

    body: bytes
    offered: frozenset[str] = frozenset()
    fallback: bytes | None = None


def _tool_names(tools: Any) -> frozenset[str]:
    names = set()
    for tool in tools if isinstance(tools, list) else []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.add(function["name"])
    return frozenset(names)


def shape_chat_request(body: bytes, spec: ModelSpec, *, merge_learned: bool = False) -> ChatShape:
    """How to send the chat request ``body`` to an engine serving ``spec``.

    ``merge_learned``: the engine already refused late system messages once (``auto`` then merges at once).
    """
    wants_tools = spec.normalise and spec.json_tool_calls and b'"tools"' in body
    wants_system = spec.system_messages != "keep" and (b'"system"' in body or b'"developer"' in body)
    if not wants_tools and not wants_system:
        return ChatShape(body)
    try:
        data = _decoder.decode(body)
    except msgspec.DecodeError:
        return ChatShape(body)  # the engine answers malformed JSON itself
    if not isinstance(data, dict):
        return ChatShape(body)
    offered = _tool_names(data.get("tools")) if wants_tools and data.get("tool_choice") != "none" else frozenset()
    if not wants_system or not has_late_system_message(data.get("messages")):
        return ChatShape(body, offered)
    merged = _encoder.encode({**data, "messages": merge_system_messages(data["messages"])})
    if spec.system_messages == "merge" or merge_learned:
        return ChatShape(merged, offered)
    return ChatShape(body, offered, fallback=merged)
