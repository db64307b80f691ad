"""Anthropic Messages API request types (what ``POST /v1/messages`` accepts), validated with msgspec.

Unknown fields are ignored (clients send newer fields helexa does not model, and beta headers never matter);
a wrong type in a field helexa uses, a bad role or an unknown content-block type is a 400 naming the field.
Content blocks are a tagged union on ``type``. The shapes follow what Claude Code sends today: ``system``
entries inside ``messages``, ``thinking`` of type ``adaptive``, ``output_config.effort``,
``context_management`` edits, ``cache_control`` on blocks, tools with ``defer_loading``.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from helexa.wire import ModelId

__all__ = [
    "AnthropicRequest",
    "Block",
    "ContextEdit",
    "ContextManagement",
    "CountTokensRequest",
    "ImageBlock",
    "ImageSource",
    "Message",
    "OutputConfig",
    "OutputFormat",
    "RedactedThinkingBlock",
    "TextBlock",
    "ThinkingBlock",
    "ThinkingConfig",
    "Tool",
    "ToolChoice",
    "ToolResultBlock",
    "ToolUseBlock",
]


class _Base(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Tolerant: unknown fields (cache_control, citations, …) are ignored."""


class TextBlock(_Base, tag="text"):
    text: str


class ImageSource(_Base):
    type: Literal["base64", "url"]
    media_type: str = ""
    data: str = ""
    url: str = ""


class ImageBlock(_Base, tag="image"):
    source: ImageSource


class ToolUseBlock(_Base, tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any] = {}


class ToolResultBlock(_Base, tag="tool_result"):
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock] = ""
    is_error: bool = False


class ThinkingBlock(_Base, tag="thinking"):
    thinking: str
    signature: str = ""


class RedactedThinkingBlock(_Base, tag="redacted_thinking"):
    data: str = ""


Block = TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock


class Message(_Base):
    role: Literal["user", "assistant", "system"]
    content: str | list[Block]


class Tool(_Base):
    """A tool. Custom tools carry ``input_schema``; server tools (``web_search_…``) carry a ``type`` only."""

    name: str
    input_schema: dict[str, Any] = {}
    description: str = ""
    type: str = "custom"
    defer_loading: bool = False


class ToolChoice(_Base):
    type: Literal["auto", "any", "tool", "none"]
    name: str = ""
    disable_parallel_tool_use: bool = False


class ThinkingConfig(_Base):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int = 0


class OutputFormat(_Base):
    """Structured outputs: ``{"type": "json_schema", "schema": {…}}``."""

    type: str
    schema: dict[str, Any] = {}


class OutputConfig(_Base):
    effort: str | None = None
    format: OutputFormat | None = None


class ContextEdit(_Base):
    """One ``context_management`` edit: only ``clear_thinking_…`` changes what the engine sees."""

    type: str
    keep: str | dict[str, Any] = "all"


class ContextManagement(_Base):
    edits: list[ContextEdit] = []


class Metadata(_Base):
    user_id: str = ""


class AnthropicRequest(_Base):
    """The body of ``POST /v1/messages``."""

    model: ModelId
    max_tokens: int
    messages: list[Message]
    system: str | list[TextBlock] = ""
    stop_sequences: list[str] = []
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    tools: list[Tool] = []
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    metadata: Metadata | None = None
    output_config: OutputConfig | None = None
    output_format: OutputFormat | None = None  # the structured-outputs beta's spelling of output_config.format
    context_management: ContextManagement | None = None


class CountTokensRequest(_Base):
    """The body of ``POST /v1/messages/count_tokens``: a request without ``max_tokens``."""

    model: ModelId
    messages: list[Message]
    system: str | list[TextBlock] = ""
    tools: list[Tool] = []
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
