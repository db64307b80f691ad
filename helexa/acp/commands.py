"""What a ``run_command`` may see and how long what it starts may live: a scrubbed environment, and a turn's
processes ended with the turn.

**Environment.** A command runs with this process's environment minus helexa's key variable (the one
``--api-key-env`` names: the model would otherwise read the key with ``echo $HELEXA_API_KEY``) and, by default,
every variable whose name looks like a secret (``…KEY…``, ``…TOKEN…``, ``…SECRET…``, ``…PASSWORD…``,
``…CREDENTIAL…``, ``…AUTH…``); ``--keep-env NAME`` lets a named one through (never the key variable). In the
editor's terminal the same names are unset with ``env -u`` before the shell starts.

**Lifetime.** ``/bin/sh``'s process group is killed when a command times out or its turn is cancelled, but a
command can leave its group (``setsid … &``) or its shell (``sleep 600 &``). So this process becomes a child
subreaper (Linux ``PR_SET_CHILD_SUBREAPER``): whatever a command leaves behind is re-parented here instead of
to init, and every command carries its turn's mark in its environment (``HELEXA_ACP_TURN``). When a turn
ends, every process below this one that bears the turn's mark — or no mark at all (a command that cleared its
environment) and is not another running turn's — is killed and reaped. Processes in the editor's own
terminals are the editor's, ended by ``terminal/kill`` and ``terminal/release``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import secrets
import signal
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from helexa.acp import tools
from helexa.acp.tools import ToolError

__all__ = [
    "MAX_COMMAND_CHARS",
    "TURN_VARIABLE",
    "adopt_orphans",
    "checked_command",
    "command_environment",
    "end_turn",
    "hidden_variables",
    "new_turn",
    "run_shell",
    "running",
]

log = logging.getLogger("helexa.acp")

MAX_COMMAND_CHARS = 4000  # longer commands are refused: the permission prompt must be able to show all of it
TURN_VARIABLE = "HELEXA_ACP_TURN"
_PR_SET_CHILD_SUBREAPER = 36
_SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH|COOKIE|SESSION", re.IGNORECASE)
_REAP_SECONDS = 2.0
running: set[int] = set()  # local command shells asyncio still waits for: never killed or reaped here


def hidden_variables(environ: Mapping[str, str], api_key_env: str, keep: Collection[str] = ()) -> list[str]:
    """The names of ``environ`` a command must not see: ``api_key_env`` always, and names that look like secrets
    unless listed in ``keep``."""
    hidden = [n for n in environ if n == api_key_env or (_SECRET.search(n) and n not in keep)]
    return sorted(set(hidden))


def command_environment(
    environ: Mapping[str, str], api_key_env: str, keep: Collection[str], turn: str
) -> dict[str, str]:
    """The environment of a local command of ``turn``: ``environ`` without :func:`hidden_variables`, marked."""
    hidden = set(hidden_variables(environ, api_key_env, keep))
    return {**{k: v for k, v in environ.items() if k not in hidden}, TURN_VARIABLE: turn}


def checked_command(args: dict[str, Any]) -> str:
    """A ``run_command``'s command. :raises ToolError: missing, not text, or too long to show whole."""
    command = tools.text_argument(args, "command")
    if len(command) > MAX_COMMAND_CHARS:
        raise ToolError(
            f"the command is {len(command)} characters long; at most {MAX_COMMAND_CHARS} are run, so the "
            "user can read all of it before allowing it: write a script with write_file and run that"
        )
    return command


def new_turn() -> str:
    """A fresh turn mark."""
    return secrets.token_hex(8)


def adopt_orphans() -> bool:
    """Make this process the reaper of every process its commands leave behind (Linux only; False elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _parents() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process, from ``/proc``."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        found[int(entry.name)] = (int(fields[1]), fields[0].decode())
    return found


def _descendants(root: int, parents: Mapping[int, tuple[int, str]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in parents.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _mark(pid: int) -> str | None:
    """The turn mark in ``pid``'s environment ("" when it has none; None when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            environ = fh.read()
    except OSError:
        return None
    prefix = TURN_VARIABLE.encode() + b"="
    for item in environ.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix) :].decode(errors="replace")
    return ""


async def end_turn(turn: str) -> int:
    """Kill every process below this one that belongs to ``turn`` — its mark, or no mark at all (a command
    that cleared its environment) — but the shells in :data:`running`, then reap those re-parented here.
    Returns how many were killed."""
    me = os.getpid()
    parents = _parents()
    killed = []
    for pid in _descendants(me, parents):
        if pid in running or parents[pid][1] == "Z":
            continue
        if _mark(pid) in (turn, ""):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    if killed:
        log.info("ended %d process(es) that turn %s left running", len(killed), turn)
    await _reap(me)
    return len(killed)


async def _reap(me: int) -> None:
    """Collect the exit status of this process's children that are not asyncio's (the re-parented ones)."""
    deadline = time.monotonic() + _REAP_SECONDS
    while True:
        parents = _parents()
        mine = [pid for pid, (ppid, _) in parents.items() if ppid == me and pid not in running]
        for pid in mine:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222  (WNOHANG: never blocks)
        left = [pid for pid in mine if pid in _parents()]
        if not left or time.monotonic() >= deadline:
            return
        await asyncio.sleep(0.02)


async def run_shell(
    command: str, cwd: Path, seconds: float, limit: int, env: dict[str, str] | None = None
) -> tuple[int | None, str]:
    """Run ``command`` with ``/bin/sh`` in ``cwd`` and ``env``: ``(exit code, output)`` — stdout and stderr
    together, at most ``limit`` characters kept. ``None`` as the code when it ran out of ``seconds``; the
    command's whole process group is killed then, and when the caller is cancelled (what left the group is
    :func:`end_turn`'s)."""
    proc = await asyncio.create_subprocess_shell(
        command,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    running.add(proc.pid)
    try:
        return await _collect(proc, seconds, limit)
    finally:
        running.discard(proc.pid)


async def _collect(proc: asyncio.subprocess.Process, seconds: float, limit: int) -> tuple[int | None, str]:
    assert proc.stdout is not None
    chunks: list[bytes] = []
    kept = 0

    async def drain() -> None:
        nonlocal kept
        while data := await proc.stdout.read(65536):
            if kept <= limit * 4:  # UTF-8: at most 4 bytes a character; the rest is read and dropped
                chunks.append(data)
                kept += len(data)
        await proc.wait()

    code: int | None
    try:
        await asyncio.wait_for(drain(), seconds)
        code = proc.returncode
    except TimeoutError:
        code = None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    return code, tools.cap(b"".join(chunks).decode("utf-8", "replace"), limit)
