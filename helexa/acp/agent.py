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
import uuid
from pathlib import Path
from typing import Any

from acp import PROTOCOL_VERSION, RequestError
from acp.helpers import (
    start_tool_call,
    tool_diff_content,
    update_agent_message_text,
    update_agent_thought_text,
    update_tool_call,
    update_user_message_text,
)
from acp.schema import (
    AgentCapabilities,
    EmbeddedResourceContentBlock,
    Implementation,
    InitializeResponse,
    ListSessionsResponse,
    LoadSessionResponse,
    NewSessionResponse,
    PermissionOption,
    PromptCapabilities,
    PromptResponse,
    ResourceContentBlock,
    SessionCapabilities,
    SessionConfigOptionSelect,
    SessionConfigSelectOption,
    SessionInfo,
    SessionListCapabilities,
    SessionMode,
    SessionModeState,
    SetSessionConfigOptionResponse,
    SetSessionModeResponse,
    TextContentBlock,
    TextResourceContents,
    ToolCallLocation,
    ToolCallUpdate,
)

from helexa.__about__ import __version__
from helexa.acp import tools
from helexa.acp.editor import Editor, text_content
from helexa.acp.sessions import MODES, Session, Store
from helexa.acp.tools import TOOLS, ToolError
from helexa.acp.upstream import Call, Upstream, UpstreamError

__all__ = ["HelexaAgent"]

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


def prompttext_content(blocks: list[Any]) -> str:
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


_READINESS = {"loaded": 0, "ready": 0, "sleeping": 1, "loading": 2, "downloading": 3, "available": 4, "download": 5}


def _select(kind: str, name: str, current: str, options: list[Any]) -> SessionConfigOptionSelect:
    """A session option of category ``kind`` (``model``, ``mode``) whose id is the category too."""
    return SessionConfigOptionSelect(
        id=kind, name=name, category=kind, type="select", current_value=current, options=options
    )


def model_choices(cards: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    """The model picker: ``(id, description)`` of each model card, the ready ones first, those the fleet cannot
    run (``unavailable``) left out; the description says the status and what a download would fetch."""
    usable = [c for c in cards if c.get("status") != "unavailable"]
    ordered = sorted(usable, key=lambda c: _READINESS.get(str(c.get("status", "")), 6))
    choices = []
    for card in ordered:
        status = str(card.get("status") or "") or None
        if status == "download" and card.get("download_bytes"):
            status = f"download {card['download_bytes'] / 2**30:.1f} GiB first"
        choices.append((str(card["id"]), status))
    return choices


class HelexaAgent:
    """The ``acp.Agent`` that ``helexa acp`` runs (see the module docstring)."""

    def __init__(
        self,
        upstream: Upstream,
        *,
        model: str = "",
        mode: str = "code",
        store: Store | None = None,
        limit: int = 20_000,
        command_timeout: float = 120.0,
        max_rounds: int = 25,
        max_tokens: int = 0,
    ) -> None:
        self.upstream = upstream
        self.max_tokens = max_tokens
        self.model = model
        self.mode = mode
        self.store = store
        self.limit = limit
        self.command_timeout = command_timeout
        self.max_rounds = max_rounds
        self.sessions: dict[str, Session] = {}
        self.models: list[dict[str, Any]] = []
        self.client: Any = None
        self.editor = Editor(None, limit=limit, command_timeout=command_timeout)

    def on_connect(self, conn: Any) -> None:
        """Keep the connection to the editor (for updates, permissions and file access)."""
        self.client = conn
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
        session = Session(id=uuid.uuid4().hex, cwd=directory, model=self._default_model(models), mode=self.mode)
        self.sessions[session.id] = session
        log.info("session %s in %s with model %s", session.id, directory, session.model)
        return NewSessionResponse(
            session_id=session.id, modes=self._modes(session), config_options=self._options(session)
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
        except UpstreamError as exc:
            log.warning("model list unavailable while resuming %s: %s", session_id, exc)
        await self._replay(session)
        return LoadSessionResponse(modes=self._modes(session), config_options=self._options(session))

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
            except UpstreamError as exc:
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
        return SetSessionConfigOptionResponse(config_options=self._options(session))

    # --- turns --------------------------------------------------------------------------------------------

    async def prompt(self, session_id: str, prompt: list[Any], **_: Any) -> PromptResponse:
        """Run one turn; its answer streams as updates, the response says why it stopped."""
        session = self._session(session_id)
        if session.task is not None and not session.task.done():
            raise _error(-32600, "a turn is already running in this session; cancel it or wait for its end")
        session.cancelled = False
        session.messages.append({"role": "user", "content": prompttext_content(prompt)})
        session.task = asyncio.create_task(self._turn(session))
        try:
            reason = await session.task
        except asyncio.CancelledError:
            if not session.cancelled:
                raise
            reason = "cancelled"
        except UpstreamError as exc:
            raise _error(-32603, str(exc)) from None
        finally:
            session.task = None
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
        for _ in range(self.max_rounds):
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
            if self.max_tokens:
                body["max_tokens"] = self.max_tokens
            try:
                answer = await self.upstream.chat(body, on_text, on_reasoning)
            except (asyncio.CancelledError, UpstreamError):  # what the editor already shows stays in the history
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
            if tool.changes and not await self._permitted(session, call.id, tool.name, title, kind):
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
            return f"Run `{str(args.get('command', ''))[:200]}`", []
        path = args.get("path", "." if name == "list_files" else "")
        try:
            where = [ToolCallLocation(path=str(tools.confine(session.cwd, str(path))))]
        except ToolError:
            where = []
        verb = {"read_file": "Read", "list_files": "List", "write_file": "Write", "edit_file": "Edit"}.get(name, name)
        return f"{verb} {str(path)[:200]}", where

    async def _permitted(self, session: Session, call_id: str, tool: str, title: str, kind: str) -> bool:
        if tool in session.always:
            return session.always[tool]
        request = ToolCallUpdate(tool_call_id=call_id, title=title, kind=kind, status="pending")
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

            return await self.editor.run(session.id, session.cwd, tools.text_argument(args, "command"), show)
        path = tools.confine(session.cwd, tools.text_argument(args, "path", "." if name == "list_files" else None))
        if name == "list_files":
            listing = await asyncio.to_thread(tools.list_dir, path)
            return listing, [text_content(listing)]
        if name == "read_file":
            text = tools.select_lines(await self.editor.read(session.id, path), args.get("line"), args.get("limit"))
            text = tools.cap(text, self.limit)
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
        except UpstreamError as exc:
            raise _error(-32603, str(exc)) from None
        if not self.models:
            raise _error(-32603, f"{self.upstream.url} offers no models; load one (helexa status shows the fleet)")
        return self.models

    def _default_model(self, models: list[dict[str, Any]]) -> str:
        ids = [i for i, _ in model_choices(models)]
        if not ids:
            raise _error(-32603, f"none of the models {self.upstream.url} lists can run there (all unavailable)")
        if self.model and self.model not in ids:
            raise _invalid(f"--model {self.model!r} is not offered by {self.upstream.url}; choose one of {ids}")
        return self.model or ids[0]  # the most ready one

    def _modes(self, session: Session) -> SessionModeState:
        modes = [SessionMode(id=k, name=name, description=text) for k, (name, text) in MODES.items()]
        return SessionModeState(current_mode_id=session.mode, available_modes=modes)

    def _options(self, session: Session) -> list[SessionConfigOptionSelect]:
        choices = [SessionConfigSelectOption(value=i, name=i, description=d) for i, d in model_choices(self.models)]
        if session.model not in {c.value for c in choices}:
            choices.append(SessionConfigSelectOption(value=session.model, name=session.model))
        modes = [SessionConfigSelectOption(value=k, name=n, description=d) for k, (n, d) in MODES.items()]
        return [_select("model", "Model", session.model, choices), _select("mode", "Mode", session.mode, modes)]

    async def _replay(self, session: Session) -> None:
        """Send a stored session's history to the editor, as it was shown the first time."""
        for message in session.messages:
            role, content = message.get("role"), message.get("content")
            if role == "user" and content:
                await self._update(session, update_user_message_text(str(content)))
            elif role == "assistant":
                if content:
                    await self._update(session, update_agent_message_text(str(content)))
                for call in message.get("tool_calls") or []:
                    name = str((call.get("function") or {}).get("name", ""))
                    kind = TOOLS[name].kind if name in TOOLS else "other"
                    await self._update(
                        session, start_tool_call(str(call.get("id", "")), name, kind=kind, status="completed")
                    )
            elif role == "tool":
                call_id = str(message.get("tool_call_id", ""))
                await self._update(
                    session, update_tool_call(call_id, content=[text_content(tools.cap(str(content), 2000))])
                )
