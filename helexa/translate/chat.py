"""Reshaping an OpenAI chat request for engines with strict chat templates. Pure.

Claude Code puts ``system`` entries in the middle of a conversation. Many templates (Qwen, Llama) render a
system message anywhere; others (Gemma, Mistral) allow only one, at the start, and fail the request
otherwise. For those, :func:`merge_system_messages` folds every system message into the leading one.
"""

from __future__ import annotations

from typing import Any

__all__ = ["has_late_system_message", "merge_system_messages"]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def has_late_system_message(messages: Any) -> bool:
    """Whether ``messages`` holds a system (or developer) message after a message of another role."""
    if not isinstance(messages, list):
        return False
    seen_other = False
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            if seen_other:
                return True
        else:
            seen_other = True
    return False


def merge_system_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with every system/developer message's text joined (blank line between) into one
    leading system message, in their original order; the other messages keep theirs."""
    system = [_text(m.get("content")) for m in messages if m.get("role") in ("system", "developer")]
    rest = [m for m in messages if m.get("role") not in ("system", "developer")]
    text = "\n\n".join(t for t in system if t)
    return ([{"role": "system", "content": text}] if text else []) + rest
