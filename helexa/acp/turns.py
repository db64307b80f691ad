"""A prompt turn of ``helexa acp``: the conversation streamed to the endpoint, the model's tool calls shown,
authorised (``session/request_permission`` for anything that changes files or runs a command) and run, their
results sent back — until the model answers without a call, or after ``max_rounds`` requests.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any

from acp import RequestError
from acp.helpers import (
    start_tool_call,
    tool_diff_content,
    update_agent_message_text,
    update_agent_thought_text,
    update_tool_call,
)
from acp.schema import PermissionOption, ToolCallLocation, ToolCallUpdate

from helexa.acp import commands, tools
from helexa.acp.editor import Editor, text_content
from helexa.acp.present import system_prompt
from helexa.acp.sessions import Session
from helexa.acp.tools import TOOLS, ToolError
from helexa.acp.upstream import Call, EndpointError, Upstream

__all__ = ["CANCELLED", "REFUSED", "Settings", "Turns"]

log = logging.getLogger("helexa.acp")

_PERMISSIONS = [
    PermissionOption(option_id="allow_once", name="Allow", kind="allow_once"),
    PermissionOption(option_id="allow_always", name="Always allow", kind="allow_always"),
    PermissionOption(option_id="reject_once", name="Reject", kind="reject_once"),
    PermissionOption(option_id="reject_always", name="Always reject", kind="reject_always"),
]
CANCELLED = "Cancelled by the user."
REFUSED = "The user refused permission for this tool call. Do not try it again; ask the user how to go on."


@dataclass(frozen=True)
class Settings:
    """What ``helexa acp``'s options set: a session's first model and mode, the cap on a tool's output
    (characters), seconds a command may run, requests per turn, ``max_tokens`` per request (0: the engine's),
    the variable holding the API key and the secret-looking variables commands may see anyway
    (:mod:`helexa.acp.commands`)."""

    model: str = ""
    mode: str = "code"
    limit: int = 20_000
    command_timeout: float = 120.0
    max_rounds: int = 25
    max_tokens: int = 0
    api_key_env: str = "HELEXA_API_KEY"
    keep_env: tuple[str, ...] = ()


class Turns:
    """Runs the turns of every session against ``upstream``, with files and commands through ``editor``."""

    def __init__(self, upstream: Upstream, settings: Settings, editor: Editor) -> None:
        self.upstream, self.settings, self.editor = upstream, settings, editor

    @property
    def client(self) -> Any:
        """The connection to the editor (updates and permission requests)."""
        return self.editor.client

    async def _update(self, session: Session, update: Any) -> None:
        await self.client.session_update(session_id=session.id, update=update)

    async def run(self, session: Session) -> str:
        """Run one turn of ``session`` (the last message is the user's prompt); why it stopped."""
        for _ in range(self.settings.max_rounds):
            shown: list[str] = []

            async def on_text(text: str, shown: list[str] = shown) -> None:
                shown.append(text)
                await self._update(session, update_agent_message_text(text))

            async def on_reasoning(text: str) -> None:
                await self._update(session, update_agent_thought_text(text))

            body = {
                "model": session.model,
                "messages": [{"role": "system", "content": system_prompt(session)}, *session.messages],
                "tools": tools.offered(read_only=session.mode == "plan"),
            }
            if self.settings.max_tokens:
                body["max_tokens"] = self.settings.max_tokens
            try:
                answer = await self.upstream.chat(body, on_text, on_reasoning)
            except (asyncio.CancelledError, EndpointError):  # what the editor already shows stays in the history
                if shown:
                    session.messages.append({"role": "assistant", "content": "".join(shown)})
                raise
            message: dict[str, Any] = {"role": "assistant", "content": answer.text or None}
            if answer.calls:
                message["tool_calls"] = [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments or "{}"}}
                    for c in answer.calls
                ]
            session.messages.append(message)
            if not answer.calls:
                return "max_tokens" if answer.finish_reason == "length" else "end_turn"
            done = 0
            try:
                for call in answer.calls:
                    result = await self._tool(session, call)
                    session.messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
                    done += 1
            except asyncio.CancelledError:
                for call in answer.calls[done:]:  # every call needs its result in the history
                    session.messages.append(
                        {"role": "tool", "tool_call_id": call.id, "content": "Cancelled by the user."}
                    )
                raise
        return "max_turn_requests"

    # --- tools --------------------------------------------------------------------------------------------

    async def _tool(self, session: Session, call: Call) -> str:
        """Show, authorise and run one call; what the model is told comes back (errors included)."""
        tool = TOOLS.get(call.name)
        try:
            args, unreadable = tools.parse_arguments(call.arguments), None
        except ToolError as exc:
            args, unreadable = {}, exc
        title, locations = self._describe(session, call.name, args)
        kind = tool.kind if tool else "other"
        await self._update(
            session,
            start_tool_call(call.id, title, kind=kind, status="pending", locations=locations, raw_input=args or None),
        )
        try:
            if unreadable is not None:
                raise unreadable
            if tool is None:
                raise ToolError(f"there is no tool {call.name!r}; the tools are {', '.join(TOOLS)}")
            if tool.changes and session.mode == "plan":
                raise ToolError(f"{call.name} is not available in plan mode (read-only); describe the change instead")
            if call.name == "run_command":
                commands.checked_command(args)  # a command too long to show whole is refused before anyone is asked
            if tool.changes and not await self._permitted(session, call.id, tool.name, title, kind, args=args):
                await self._update(
                    session, update_tool_call(call.id, status="failed", content=[text_content("Refused.")])
                )
                return REFUSED
            await self._update(session, update_tool_call(call.id, status="in_progress"))
            output, shown = await self._run(session, call.id, call.name, args)
        except ToolError as exc:
            await self._update(session, update_tool_call(call.id, status="failed", content=[text_content(str(exc))]))
            return f"Error: {exc}"
        await self._update(session, update_tool_call(call.id, status="completed", content=shown))
        return output

    def _describe(self, session: Session, name: str, args: dict[str, Any]) -> tuple[str, list[ToolCallLocation]]:
        if name == "run_command":
            command = str(args.get("command", ""))
            return f"Run `{command[:200]}`" + (" (whole command below)" if len(command) > 200 else ""), []
        path = args.get("path", "." if name == "list_files" else "")
        try:
            where = [ToolCallLocation(path=str(tools.confine(session.cwd, str(path))))]
        except ToolError:
            where = []
        verb = {"read_file": "Read", "list_files": "List", "write_file": "Write", "edit_file": "Edit"}.get(name, name)
        return f"{verb} {str(path)[:200]}", where

    async def _permitted(
        self, session: Session, call_id: str, tool: str, title: str, kind: str, *, args: dict[str, Any]
    ) -> bool:
        if tool in session.always:
            return session.always[tool]
        request = ToolCallUpdate(tool_call_id=call_id, title=title, kind=kind, status="pending")
        if tool == "run_command":  # the whole command, whatever the title could show
            request.content = [text_content(commands.checked_command(args))]
            request.raw_input = {"command": commands.checked_command(args)}
        try:
            answer = await self.client.request_permission(
                session_id=session.id, tool_call=request, options=_PERMISSIONS
            )
        except RequestError as exc:
            raise ToolError(f"the editor could not ask for permission ({exc})") from None
        outcome = answer.outcome
        if outcome.outcome == "cancelled":  # the editor cancelled the turn
            session.cancelled = True
            raise asyncio.CancelledError
        choice = outcome.option_id
        if choice.endswith("_always"):
            session.always[tool] = choice.startswith("allow")
        return choice.startswith("allow")

    async def _run(self, session: Session, call_id: str, name: str, args: dict[str, Any]) -> tuple[str, list[Any]]:
        """Carry out a permitted call: (what the model is told, what the editor shows)."""
        if name == "run_command":

            async def show(content: list[Any]) -> None:
                await self._update(session, update_tool_call(call_id, content=content))

            settings, environ = self.settings, os.environ
            return await self.editor.run(
                session.id,
                session.cwd,
                commands.checked_command(args),
                show,
                env=commands.command_environment(environ, settings.api_key_env, settings.keep_env, session.turn),
                unset=commands.hidden_variables(environ, settings.api_key_env, settings.keep_env),
            )
        path = tools.confine(session.cwd, tools.text_argument(args, "path", "." if name == "list_files" else None))
        if name == "list_files":
            listing = await asyncio.to_thread(tools.list_dir, path)
            return listing, [text_content(listing)]
        if name == "read_file":
            text = tools.select_lines(await self.editor.read(session.id, path), args.get("line"), args.get("limit"))
            text = tools.cap(text, self.settings.limit)
            return text, [text_content(text)]
        if name == "write_file":
            new = tools.text_argument(args, "content")
            old = await self.editor.read(session.id, path) if path.is_file() else None
        else:  # edit_file
            old = await self.editor.read(session.id, path)
            new = tools.apply_edit(old, tools.text_argument(args, "old_text"), tools.text_argument(args, "new_text"))
        await self.editor.write(session.id, path, new)
        rel = path.relative_to(session.cwd)
        return f"{'Wrote' if name == 'write_file' else 'Edited'} {rel} ({len(new)} characters).", [
            tool_diff_content(str(path), new, old)
        ]
