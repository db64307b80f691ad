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
from acp.schema import (
    AgentCapabilities,
    Implementation,
    InitializeResponse,
    ListSessionsResponse,
    LoadSessionResponse,
    NewSessionResponse,
    PromptCapabilities,
    PromptResponse,
    SessionCapabilities,
    SessionInfo,
    SessionListCapabilities,
    SetSessionConfigOptionResponse,
    SetSessionModeResponse,
)

from helexa.__about__ import __version__
from helexa.acp import commands
from helexa.acp.editor import Editor
from helexa.acp.present import config_options, mode_state, model_choices, prompt_text, replay
from helexa.acp.sessions import MODES, Session, SessionStore
from helexa.acp.turns import Settings, Turns
from helexa.acp.upstream import EndpointError, Upstream

__all__ = ["HelexaAgent"]

log = logging.getLogger("helexa.acp")


def _error(code: int, message: str) -> RequestError:
    return RequestError(code, message, {"details": message})


def _invalid(message: str) -> RequestError:
    return _error(-32602, message)


class HelexaAgent:
    """The ``acp.Agent`` that ``helexa acp`` runs (see the module docstring)."""

    def __init__(self, upstream: Upstream, settings: Settings, store: SessionStore | None = None) -> None:
        self.upstream = upstream
        self.settings = settings
        self.store = store
        self.sessions: dict[str, Session] = {}
        self.models: list[dict[str, Any]] = []
        self.editor = Editor(None, limit=settings.limit, command_timeout=settings.command_timeout)
        self.turns = Turns(upstream, settings, self.editor)

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
        session.task = asyncio.create_task(self.turns.run(session))
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
