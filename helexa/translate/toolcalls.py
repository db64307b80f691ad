"""Tool calls that small models get almost right: a whole answer that is bare JSON naming an offered tool.

Small instruct models offered tools often answer ``{"name": "get_weather", "arguments": {"city": "Paris"}}``
as plain text — sometimes inside one ```json fence — without the ``<tool_call>`` markers their template
defines. The rule, exactly: when a request offers tools and the model's *whole* answer, after trimming white
space and one code fence, is a JSON object (or a list of objects) where every object has a ``name`` that is
one of the offered tools and ``arguments`` (or ``parameters``) that is an object or a JSON string, the answer
is those tool calls. Anything else — text around the JSON, an unknown name, no tools offered — stays text.

Pure functions, shared by the neuron's normaliser (which applies them to all three dialects, since the
gateway's translations are built on the neuron's chat completions) and by clients such as ``helexa acp``.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import msgspec

__all__ = ["bare_tool_calls", "may_become_call", "strip_fence"]

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
_FENCE = "```"
_MAX_INFO = 16  # longest fence info string considered ("json", "tool_call", …)


def strip_fence(text: str) -> str:
    """``text`` without surrounding white space and one surrounding code fence (```json … ```)."""
    text = text.strip()
    if not text.startswith(_FENCE):
        return text
    first, _, rest = text.partition("\n")
    if len(first) - len(_FENCE) > _MAX_INFO or not rest:
        return text
    rest = rest.rstrip()
    return rest[: -len(_FENCE)].strip() if rest.endswith(_FENCE) else text


def may_become_call(prefix: str) -> bool:
    """Whether an answer that starts with ``prefix`` could still turn out to be a bare JSON tool call."""
    text = prefix.lstrip()
    if not text or text[0] in "{[":
        return True
    if len(text) < len(_FENCE):
        return _FENCE.startswith(text)
    if not text.startswith(_FENCE):
        return False
    first, newline, rest = text.partition("\n")
    if not newline:
        info = first[len(_FENCE) :]
        return len(info) <= _MAX_INFO and (not info or info.replace("_", "").isalnum())
    rest = rest.lstrip()
    return not rest or rest[0] in "{["


def _call(value: Any, offered: Collection[str]) -> tuple[str, str] | None:
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("function"), dict):  # {"type": "function", "function": {"name", "arguments"}}
        value = value["function"]
    name = value.get("name")
    if not isinstance(name, str) or name not in offered:
        return None
    arguments = value.get("arguments", value.get("parameters"))
    if isinstance(arguments, dict):
        return name, _encoder.encode(arguments).decode()
    if isinstance(arguments, str):
        try:
            parsed = _decoder.decode(arguments) if arguments.strip() else {}
        except msgspec.DecodeError:
            return None
        return (name, arguments) if isinstance(parsed, dict) else None
    return None


def bare_tool_calls(text: str, offered: Collection[str]) -> list[tuple[str, str]] | None:
    """``[(name, arguments JSON)]`` when ``text`` is wholly a call to offered tools (see the module rule)."""
    if not offered:
        return None
    body = strip_fence(text)
    if not body or body[0] not in "{[":
        return None
    try:
        value = _decoder.decode(body)
    except msgspec.DecodeError:
        return None
    items = value if isinstance(value, list) else [value]
    calls = [_call(item, offered) for item in items]
    if not calls or any(c is None for c in calls):
        return None
    return [c for c in calls if c is not None]
