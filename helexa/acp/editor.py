"""The editor's side of a tool call: files through ``fs/*`` and commands through ``terminal/*`` when the editor
offers them, the local disk and a local shell when it does not.

Through the editor, the model sees unsaved buffers, the editor tracks the edits and shows a command live in
its own terminal. Paths here are already confined to the session's directory (:func:`helexa.acp.tools.confine`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from acp import RequestError
from acp.helpers import text_block, tool_content, tool_terminal_ref

from helexa.acp import commands, tools
from helexa.acp.tools import ToolError

__all__ = ["MAX_FILE_BYTES", "Editor", "text_content"]

MAX_FILE_BYTES = 8 * 1024 * 1024
Show = Callable[[list[Any]], Awaitable[None]]


def text_content(text: str) -> Any:
    """Text as tool-call content."""
    return tool_content(text_block(text))


class Editor:
    """What the connected editor can do for tools (set from its ``initialize`` capabilities), and the fallbacks.

    ``limit``: characters of output a command returns; ``command_timeout``: seconds before a command is killed.
    """

    def __init__(self, client: Any, *, limit: int, command_timeout: float) -> None:
        self.client = client
        self.limit = limit
        self.command_timeout = command_timeout
        self.reads = self.writes = self.terminal = False

    def learn(self, capabilities: Any) -> None:
        """Take the editor's ``clientCapabilities`` (``None``: it offers nothing)."""
        fs = getattr(capabilities, "fs", None)
        self.reads = bool(getattr(fs, "read_text_file", False))
        self.writes = bool(getattr(fs, "write_text_file", False))
        self.terminal = bool(getattr(capabilities, "terminal", False))

    async def read(self, session_id: str, path: Path) -> str:
        """The text of ``path`` (the editor's buffer when it reads files). :raises ToolError: it cannot be read."""
        if self.reads:
            try:
                return (await self.client.read_text_file(session_id=session_id, path=str(path))).content
            except RequestError as exc:
                raise ToolError(f"cannot read {path}: {exc} {exc.data or ''}".strip()) from None
        return await asyncio.to_thread(_read_local, path)

    async def write(self, session_id: str, path: Path, text: str) -> None:
        """Write ``text`` to ``path``. :raises ToolError: it cannot be written."""
        if self.writes:
            try:
                await self.client.write_text_file(session_id=session_id, path=str(path), content=text)
                return
            except RequestError as exc:
                raise ToolError(f"cannot write {path}: {exc} {exc.data or ''}".strip()) from None
        await asyncio.to_thread(_write_local, path, text)

    async def run(
        self, session_id: str, cwd: Path, command: str, show: Show, *, env: dict[str, str], unset: list[str]
    ) -> tuple[str, list[Any]]:
        """Run ``command`` with ``/bin/sh -c`` in ``cwd``: (exit status and capped output for the model, what the
        tool call shows). ``show`` puts the editor's live terminal into the tool call as soon as it exists.
        Locally the command gets ``env``; in the editor's terminal the variables ``unset`` are removed from the
        editor's environment first (``env -u``)."""
        if self.terminal:
            return await self._in_terminal(session_id, cwd, command, show, unset)
        code, output = await commands.run_shell(command, cwd, self.command_timeout, self.limit, env)
        status = f"timed out after {self.command_timeout:g} s" if code is None else f"exit code {code}"
        text = f"{status}\n{output}"
        return text, [text_content(text)]

    async def _in_terminal(
        self, session_id: str, cwd: Path, command: str, show: Show, unset: list[str]
    ) -> tuple[str, list[Any]]:
        """In one of the editor's terminals (``terminal/create``): killed after ``command_timeout`` and when the
        turn is cancelled, released in every case."""
        removed = [arg for name in unset for arg in ("-u", name)]
        try:
            created = await self.client.create_terminal(
                session_id=session_id,
                command="/usr/bin/env" if removed else "/bin/sh",
                args=[*removed, "/bin/sh", "-c", command] if removed else ["-c", command],
                cwd=str(cwd),
                output_byte_limit=self.limit * 4,
            )
        except RequestError as exc:
            raise ToolError(f"the editor could not start a terminal ({exc})") from None
        terminal = {"session_id": session_id, "terminal_id": created.terminal_id}
        shown = [tool_terminal_ref(created.terminal_id)]
        try:
            await show(shown)
            try:
                ended = await asyncio.wait_for(self.client.wait_for_terminal_exit(**terminal), self.command_timeout)
                status = f"exit code {ended.exit_code}" if ended.exit_code is not None else f"killed ({ended.signal})"
            except TimeoutError:
                await self.client.kill_terminal(**terminal)
                status = f"timed out after {self.command_timeout:g} s"
            output = (await self.client.terminal_output(**terminal)).output
        except RequestError as exc:
            raise ToolError(f"the editor's terminal failed ({exc})") from None
        finally:
            await asyncio.shield(self._release(terminal))
        return f"{status}\n{tools.cap(output, self.limit)}", shown

    async def _release(self, terminal: dict[str, str]) -> None:
        for step in (self.client.kill_terminal, self.client.release_terminal):  # kill: a no-op once it exited
            with contextlib.suppress(RequestError, ConnectionError):
                await step(**terminal)


def _read_local(path: Path) -> str:
    if not path.is_file():
        raise ToolError(f"{path} is not a file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ToolError(f"{path} is larger than {MAX_FILE_BYTES} bytes; read a smaller file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ToolError(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise ToolError(f"cannot read {path}: {exc.strerror}") from None


def _write_local(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ToolError(f"cannot write {path}: {exc.strerror}") from None
