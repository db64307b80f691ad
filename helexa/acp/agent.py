"""The ACP agent: sessions, prompt turns streamed as ``session/update``, tools behind permission requests.

A turn sends the conversation to ``/v1/chat/completions`` (streamed) with the tools of the session's mode;
text and reasoning arrive in the editor as message and thought chunks while they stream. When the model calls
tools, each call is shown as a tool call, run — after ``session/request_permission`` for anything that changes
files or runs a command — and its result goes back to the model, until it answers without a call (or after
``max_rounds`` requests). ``session/cancel`` cancels the turn: the HTTP request is closed (the gateway then
stops the engine's request), a running command is killed, and the prompt answers ``cancelled``.

Files are read and written through the editor when it offers ``fs/read_text_file`` / ``fs/write_text_file``
(so unsaved buffers are seen and edits are tracked), on the local disk otherwise — either way only inside the
session's working directory (:func:`helexa.acp.tools.confine`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acp import PROTOCOL_VERSION, RequestError
from acp.helpers import (
    start_tool_call,
    tool_diff_content,
    update_agent_message_text,
    update_agent_thought_text,
    update_tool_call,
)
from acp.schema import (
    AgentCapabilities,
    Implementation,
    InitializeResponse,
    ListSessionsResponse,
    LoadSessionResponse,
    NewSessionResponse,
    PermissionOption,
    PromptCapabilities,
    PromptResponse,
    SessionCapabilities,
    SessionInfo,
    SessionListCapabilities,
    SetSessionConfigOptionResponse,
    SetSessionModeResponse,
    ToolCallLocation,
    ToolCallUpdate,
)

from helexa.__about__ import __version__
from helexa.acp import commands, tools
from helexa.acp.editor import Editor, text_content
from helexa.acp.present import config_options, mode_state, model_choices, prompt_text, replay, system_prompt
from helexa.acp.sessions import MODES, Session, SessionStore
from helexa.acp.tools import TOOLS, ToolError
from helexa.acp.upstream import Call, EndpointError, Upstream

__all__ = ["HelexaAgent", "Settings"]

log = logging.getLogger("helexa.acp")

_PERMISSIONS = [
    PermissionOption(option_id="allow_once", name="Allow", kind="allow_once"),
    PermissionOption(option_id="allow_always", name="Always allow", kind="allow_always"),
    PermissionOption(option_id="reject_once", name="Reject", kind="reject_once"),
    PermissionOption(option_id="reject_always", name="Always reject", kind="reject_always"),
]
CANCELLED = "Cancelled by the user."
REFUSED = "The user refused permission for this tool call. Do not try it again; ask the user how to go on."


def _error(code: int, message: str) -> RequestError:
    return RequestError(code, message, {"details": message})


def _invalid(message: str) -> RequestError:
    return _error(-32602, message)


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


class HelexaAgent:
    """The ``acp.Agent`` that ``helexa acp`` runs (see the module docstring)."""

    def __init__(self, upstream: Upstream, settings: Settings, store: SessionStore | None = None) -> None:
        self.upstream = upstream
        self.settings = settings
        self.store = store
        self.sessions: dict[str, Session] = {}
        self.models: list[dict[str, Any]] = []
        self.editor = Editor(None, limit=settings.limit, command_timeout=settings.command_timeout)

    @property
    def client(self) -> Any:
        """The connection to the editor (updates, permissions; the editor's files and terminals via ``editor``)."""
        return self.editor.client

    def on_connect(self, conn: Any) -> None:
        """Keep the connection to the editor (for updates, permissions and file access)."""
        self.editor.client = conn

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def initialize(
        self, protocol_version: int, client_capabilities: Any = None, client_info: Any = None, **_: Any
    ) -> InitializeResponse:
        """Agree on the protocol version and say what this agent can do."""
        self.editor.learn(client_capabilities)
        stored = self.store is not None
        capabilities = AgentCapabilities(
            load_session=stored,
            prompt_capabilities=PromptCapabilities(embedded_context=True),
            session_capabilities=SessionCapabilities(list=SessionListCapabilities() if stored else None),
        )
        return InitializeResponse(
            protocol_version=min(protocol_version, PROTOCOL_VERSION),
            agent_capabilities=capabilities,
            agent_info=Implementation(name="helexa", title="helexa", version=__version__),
        )

    async def authenticate(self, method_id: str, **_: Any) -> None:
        """Nothing to do: the API key comes from the environment (``--api-key-env``)."""

    async def new_session(self, cwd: str, **_: Any) -> NewSessionResponse:
        """A session in ``cwd`` (an absolute directory) with ``--model`` or the first loaded model."""
        directory = self._directory(cwd)
        models = await self._fetch_models()
        session = Session(
            id=uuid.uuid4().hex, cwd=directory, model=self._default_model(models), mode=self.settings.mode
        )
        self.sessions[session.id] = session
        log.info("session %s in %s with model %s", session.id, directory, session.model)
        return NewSessionResponse(
            session_id=session.id, modes=mode_state(session), config_options=config_options(session, self.models)
        )

    async def load_session(self, cwd: str, session_id: str, **_: Any) -> LoadSessionResponse:
        """Resume a stored session: its history is replayed to the editor as updates."""
        session = self.sessions.get(session_id) or (self.store.load(session_id) if self.store else None)
        if session is None:
            raise _error(-32002, f"no session {session_id!r} is stored here (sessions are kept with --sessions-dir)")
        session.cwd = self._directory(cwd)
        self.sessions[session.id] = session
        try:
            self.models = await self.upstream.models()
        except EndpointError as exc:
            log.warning("model list unavailable while resuming %s: %s", session_id, exc)
        for update in replay(session):
            await self._update(session, update)
        return LoadSessionResponse(modes=mode_state(session), config_options=config_options(session, self.models))

    async def list_sessions(self, cwd: str | None = None, cursor: str | None = None, **_: Any) -> ListSessionsResponse:
        """The stored sessions (of ``cwd`` when given), most recent first."""
        stored = self.store.all() if self.store else []
        infos = [
            SessionInfo(session_id=s.id, cwd=str(s.cwd), title=s.title or None, updated_at=s.updated_at or None)
            for s in stored
            if cwd is None or str(s.cwd) == cwd
        ]
        return ListSessionsResponse(sessions=infos)

    async def set_session_mode(self, session_id: str, mode_id: str, **_: Any) -> SetSessionModeResponse:
        """Switch between ``code`` and the read-only ``plan``."""
        session = self._session(session_id)
        if mode_id not in MODES:
            raise _invalid(f"unknown mode {mode_id!r}; the modes are {', '.join(MODES)}")
        session.mode = mode_id
        return SetSessionModeResponse()

    async def set_config_option(
        self, config_id: str, session_id: str, value: str | bool, **_: Any
    ) -> SetSessionConfigOptionResponse:
        """Change the session's ``model`` (from the endpoint's list, fetched again) or ``mode``."""
        session = self._session(session_id)
        if config_id == "mode":
            await self.set_session_mode(session_id, str(value))
        elif config_id == "model":
            try:
                self.models = await self.upstream.models()
            except EndpointError as exc:
                log.warning("model list unavailable, checking against the last one: %s", exc)
            ids = [i for i, _ in model_choices(self.models)]
            if value not in ids:
                raise _invalid(
                    f"model {value!r} is not offered by {self.upstream.url} (or cannot run there); choose one of {ids}"
                )
            session.model = str(value)
            log.info("session %s now uses model %s", session_id, value)
        else:
            raise _invalid(f"unknown configuration option {config_id!r}; the options are model and mode")
        return SetSessionConfigOptionResponse(config_options=config_options(session, self.models))

    # --- turns --------------------------------------------------------------------------------------------

    async def prompt(self, session_id: str, prompt: list[Any], **_: Any) -> PromptResponse:
        """Run one turn; its answer streams as updates, the response says why it stopped."""
        session = self._session(session_id)
        if session.task is not None and not session.task.done():
            raise _error(-32600, "a turn is already running in this session; cancel it or wait for its end")
        session.cancelled = False
        session.messages.append({"role": "user", "content": prompt_text(prompt)})
        session.turn = commands.new_turn()
        session.task = asyncio.create_task(self._turn(session))
        try:
            reason = await session.task
        except asyncio.CancelledError:
            if not session.cancelled:
                raise
            reason = "cancelled"
        except EndpointError as exc:
            raise _error(-32603, str(exc)) from None
        finally:
            session.task = None
            await commands.end_turn(session.turn)  # nothing a command started outlives its turn
            session.touch()
            if self.store is not None:
                self.store.save(session)
        return PromptResponse(stop_reason=reason)

    async def cancel(self, session_id: str, **_: Any) -> None:
        """Stop the session's running turn, if there is one."""
        session = self.sessions.get(session_id)
        if session is not None and session.task is not None and not session.task.done():
            session.cancelled = True
            session.task.cancel()
            log.info("session %s: turn cancelled", session_id)

    async def _turn(self, session: Session) -> str:
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

    # --- helpers ------------------------------------------------------------------------------------------

    async def _update(self, session: Session, update: Any) -> None:
        await self.client.session_update(session_id=session.id, update=update)

    def _session(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise _error(-32002, f"no session {session_id!r}; create one with session/new (or session/load)")
        return session

    @staticmethod
    def _directory(cwd: str) -> Path:
        path = Path(cwd)
        if not path.is_absolute() or not path.is_dir():
            raise _invalid(f"cwd must be the absolute path of an existing directory, not {cwd!r}")
        return path.resolve()

    async def _fetch_models(self) -> list[dict[str, Any]]:
        try:
            self.models = await self.upstream.models()
        except EndpointError as exc:
            raise _error(-32603, str(exc)) from None
        if not self.models:
            raise _error(-32603, f"{self.upstream.url} offers no models; load one (helexa status shows the fleet)")
        return self.models

    def _default_model(self, models: list[dict[str, Any]]) -> str:
        ids = [i for i, _ in model_choices(models)]
        if not ids:
            raise _error(-32603, f"none of the models {self.upstream.url} lists can run there (all unavailable)")
        wanted = self.settings.model
        if wanted and wanted not in ids:
            raise _invalid(f"--model {wanted!r} is not offered by {self.upstream.url}; choose one of {ids}")
        return wanted or ids[0]  # the most ready one
