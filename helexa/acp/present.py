"""How ``helexa acp`` presents a session to the editor and to the model. Pure: no I/O, no state.

To the editor: the model picker and the mode picker (ACP session config options and modes) and the updates that
replay a stored conversation. To the model: the system message of the session's mode and a prompt's text.
"""

from __future__ import annotations

from typing import Any

from acp.helpers import start_tool_call, update_agent_message_text, update_tool_call, update_user_message_text
from acp.schema import (
    EmbeddedResourceContentBlock,
    ResourceContentBlock,
    SessionConfigOptionSelect,
    SessionConfigSelectOption,
    SessionMode,
    SessionModeState,
    TextContentBlock,
    TextResourceContents,
)

from helexa.acp import tools
from helexa.acp.editor import text_content
from helexa.acp.sessions import MODES, Session
from helexa.acp.tools import TOOLS

__all__ = ["config_options", "mode_state", "model_choices", "prompt_text", "replay", "system_prompt"]

_READINESS = {"loaded": 0, "ready": 0, "sleeping": 1, "loading": 2, "downloading": 3, "available": 4, "download": 5}


def system_prompt(session: Session) -> str:
    """The system message of every request in ``session`` (it follows the session's mode)."""
    text = (
        f"You are a coding assistant working in the directory {session.cwd}. Use the tools to look at files "
        "before you change them; paths are relative to that directory. Keep answers short."
    )
    if session.mode == "plan":
        text += (
            " You are in plan mode: you can read and list files but not change them or run commands. "
            "End with a numbered plan of the changes you would make."
        )
    return text


def prompt_text(blocks: list[Any]) -> str:
    """An ACP prompt as the text of one user message (links and embedded files included as text)."""
    parts = []
    for block in blocks:
        if isinstance(block, TextContentBlock):
            parts.append(block.text)
        elif isinstance(block, ResourceContentBlock):
            parts.append(f"[{block.name}]({block.uri})")
        elif isinstance(block, EmbeddedResourceContentBlock) and isinstance(block.resource, TextResourceContents):
            parts.append(f'\n<file uri="{block.resource.uri}">\n{block.resource.text}\n</file>')
        else:
            parts.append(f"[{getattr(block, 'type', 'content')} omitted: this agent sends text only]")
    return "\n".join(parts)


def model_choices(cards: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    """The model picker: ``(id, description)`` of each model card, the ready ones first, those the fleet cannot
    run (``unavailable``) left out; the description says the status and what a download would fetch."""
    usable = [c for c in cards if c.get("status") != "unavailable"]
    ordered = sorted(usable, key=lambda c: _READINESS.get(str(c.get("status", "")), 6))
    choices = []
    for card in ordered:
        status = str(card.get("status") or "") or None
        if status in ("needs_download", "download") and card.get("download_bytes"):  # "download": 0.1.0 gateways
            status = f"download {card['download_bytes'] / 2**30:.1f} GiB first"
        choices.append((str(card["id"]), status))
    return choices


def _select(kind: str, name: str, current: str, options: list[Any]) -> SessionConfigOptionSelect:
    """A session option of category ``kind`` (``model``, ``mode``) whose id is the category too."""
    return SessionConfigOptionSelect(
        id=kind, name=name, category=kind, type="select", current_value=current, options=options
    )


def config_options(session: Session, cards: list[dict[str, Any]]) -> list[SessionConfigOptionSelect]:
    """The session's model picker (from the endpoint's model ``cards``) and mode picker."""
    choices = [SessionConfigSelectOption(value=i, name=i, description=d) for i, d in model_choices(cards)]
    if session.model not in {c.value for c in choices}:
        choices.append(SessionConfigSelectOption(value=session.model, name=session.model))
    modes = [SessionConfigSelectOption(value=k, name=n, description=d) for k, (n, d) in MODES.items()]
    return [_select("model", "Model", session.model, choices), _select("mode", "Mode", session.mode, modes)]


def mode_state(session: Session) -> SessionModeState:
    """The session's modes for editors that use ``session/set_mode``."""
    modes = [SessionMode(id=k, name=name, description=text) for k, (name, text) in MODES.items()]
    return SessionModeState(current_mode_id=session.mode, available_modes=modes)


def replay(session: Session) -> list[Any]:
    """The updates that show a stored conversation as it was shown the first time."""
    updates: list[Any] = []
    for message in session.messages:
        role, content = message.get("role"), message.get("content")
        if role == "user" and content:
            updates.append(update_user_message_text(str(content)))
        elif role == "assistant":
            if content:
                updates.append(update_agent_message_text(str(content)))
            for call in message.get("tool_calls") or []:
                name = str((call.get("function") or {}).get("name", ""))
                kind = TOOLS[name].kind if name in TOOLS else "other"
                updates.append(start_tool_call(str(call.get("id", "")), name, kind=kind, status="completed"))
        elif role == "tool":
            shown = [text_content(tools.cap(str(content), 2000))]
            updates.append(update_tool_call(str(message.get("tool_call_id", "")), content=shown))
    return updates
