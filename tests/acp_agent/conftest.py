"""``helexa acp`` driven by the real ACP client (the ``agent-client-protocol`` package's client side), against
``helexa run --role both`` in front of scripted engines that record what they receive."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from acp import spawn_agent_process
from acp.schema import (
    AllowedOutcome,
    ClientCapabilities,
    CreateTerminalResponse,
    DeniedOutcome,
    FileSystemCapabilities,
    KillTerminalResponse,
    ReadTextFileResponse,
    ReleaseTerminalResponse,
    RequestPermissionResponse,
    TerminalOutputResponse,
    WaitForTerminalExitResponse,
    WriteTextFileResponse,
)

from tests.conftest import ROOT, free_port, wait_for_loaded, wait_http

CODER, OTHER = "coder", "other"
OTHER_REPLY = "I am the other model."


@dataclass
class Editor:
    """An ACP client that behaves like an editor: shows updates, answers permissions, reads and writes files."""

    permission: str = "allow_once"  # the option chosen, or "cancelled"
    updates: list[Any] = field(default_factory=list)
    permissions: list[Any] = field(default_factory=list)
    reads: list[str] = field(default_factory=list)
    writes: list[str] = field(default_factory=list)

    async def session_update(self, session_id: str, update: Any, **_: Any) -> None:
        self.updates.append(update)

    async def request_permission(self, session_id: str, tool_call: Any, options: list[Any], **_: Any):
        self.permissions.append((tool_call, [o.option_id for o in options]))
        if self.permission == "cancelled":
            return RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))
        return RequestPermissionResponse(outcome=AllowedOutcome(outcome="selected", option_id=self.permission))

    async def read_text_file(self, session_id: str, path: str, **_: Any) -> ReadTextFileResponse:
        self.reads.append(path)
        return ReadTextFileResponse(content=Path(path).read_text())  # noqa: ASYNC240 (a small test file)

    async def write_text_file(self, session_id: str, path: str, content: str, **_: Any) -> WriteTextFileResponse:
        self.writes.append(path)
        Path(path).parent.mkdir(parents=True, exist_ok=True)  # as editors do
        Path(path).write_text(content)  # noqa: ASYNC240
        return WriteTextFileResponse()

    terminals: dict[str, Any] = field(default_factory=dict)
    terminal_calls: list[tuple[str, Any]] = field(default_factory=list)

    async def create_terminal(self, session_id: str, command: str, args=None, cwd=None, **_: Any):
        """Runs the command as an editor's terminal would (output kept, read on request)."""
        proc = await asyncio.create_subprocess_exec(
            command,
            *(args or []),
            cwd=cwd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        terminal_id = f"term-{len(self.terminals)}"
        self.terminals[terminal_id] = proc
        self.terminal_calls.append(("create", (command, args, cwd)))
        return CreateTerminalResponse(terminal_id=terminal_id)

    async def wait_for_terminal_exit(self, session_id: str, terminal_id: str, **_: Any):
        self.terminal_calls.append(("wait", terminal_id))
        code = await self.terminals[terminal_id].wait()
        return WaitForTerminalExitResponse(exit_code=code if code >= 0 else None, signal=None if code >= 0 else "KILL")

    async def terminal_output(self, session_id: str, terminal_id: str, **_: Any):
        self.terminal_calls.append(("output", terminal_id))
        proc = self.terminals[terminal_id]
        output = (await proc.stdout.read()).decode() if proc.returncode is not None else ""
        return TerminalOutputResponse(output=output, truncated=False)

    async def kill_terminal(self, session_id: str, terminal_id: str, **_: Any):
        self.terminal_calls.append(("kill", terminal_id))
        proc = self.terminals[terminal_id]
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the command's children too, as a terminal's hangup does
            await proc.wait()
        return KillTerminalResponse()

    async def release_terminal(self, session_id: str, terminal_id: str, **_: Any):
        self.terminal_calls.append(("release", terminal_id))
        await self.terminals[terminal_id].stdout.read()  # to its end: the pipe closes
        return ReleaseTerminalResponse()

    def of(self, kind: str) -> list[Any]:
        """The updates of one kind (``agent_message_chunk``, ``tool_call``, …)."""
        return [u for u in self.updates if u.session_update == kind]

    def text(self, kind: str = "agent_message_chunk") -> str:
        """The text of every chunk of ``kind``, joined."""
        return "".join(u.content.text for u in self.of(kind))


EDITOR_CAPABILITIES = ClientCapabilities(fs=FileSystemCapabilities(read_text_file=True, write_text_file=True))


@dataclass
class Stack:
    """A gateway (``url``) with models ``coder`` (scripted) and ``other``, and a working directory."""

    url: str
    workdir: Path
    secret: str
    records: dict[str, Path]
    engines: dict[str, str]

    def received(self, model: str = CODER) -> list[dict]:
        """Every chat request that model's engine got, in order."""
        path = self.records[model]
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def engine_stats(self, model: str = CODER) -> dict:
        with urllib.request.urlopen(f"{self.engines[model]}/stats", timeout=5) as resp:
            return json.load(resp)

    @asynccontextmanager
    async def agent(self, editor: Editor, *args: str, env: dict[str, str] | None = None) -> AsyncIterator[Any]:
        """``helexa acp`` as a subprocess with a connection to it (stderr to ``workdir/../acp.log``); ``env`` is
        added to this process's environment."""
        log = (self.workdir.parent / "acp.log").open("ab")
        argv = ["-m", "helexa", "acp", "--url", self.url, *args]
        try:
            async with spawn_agent_process(
                editor,
                sys.executable,
                *argv,
                env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                transport_kwargs={"stderr": log.fileno()},
            ) as (conn, _proc):
                yield conn
        finally:
            log.close()


@pytest.fixture
def acp_stack(tmp_path, helexa_process) -> Iterator:
    """``start(script) -> Stack``: two scripted engines behind ``helexa run --role both``."""
    engines: list[subprocess.Popen] = []

    def start(script: list[dict]) -> Stack:
        workdir = tmp_path / "work"
        workdir.mkdir()
        secret = "acp-secret-" + os.urandom(4).hex()
        (workdir / "notes.txt").write_text(f"The magic word is {secret}.\n")
        (tmp_path / "script.json").write_text(json.dumps(script))
        records, urls, models = {}, {}, ""
        for model, extra in ((CODER, ["--script", str(tmp_path / "script.json")]), (OTHER, ["--reply", OTHER_REPLY])):
            port = free_port()
            records[model] = tmp_path / f"{model}-requests.jsonl"
            argv = [sys.executable, str(ROOT / "tests/fakes/fake_engine.py"), "--port", str(port), "--model", model]
            argv += ["--record", str(records[model]), "--chunk-size", "7", *extra]
            engines.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            urls[model] = f"http://127.0.0.1:{port}"
            wait_http(f"{urls[model]}/health")
            models += f'[[models]]\nid = "{model}"\nharness = "external"\nsource = "{urls[model]}/v1"\n'
        gw, neuron, metrics = free_port(), free_port(), free_port()
        config = tmp_path / "helexa.toml"
        config.write_text(
            f"""
[gateway]
listen = "127.0.0.1:{gw}"
metrics_listen = "127.0.0.1:{metrics}"
poll_interval_seconds = 0.5
[neuron]
listen = "127.0.0.1:{neuron}"
model_dirs = ["{tmp_path}"]
preload = ["{CODER}", "{OTHER}"]
{models}"""
        )
        proc = helexa_process("run", "--role", "both", "--config", str(config))
        url = f"http://127.0.0.1:{gw}"
        wait_for_loaded(proc, url, {CODER, OTHER}, helexa_process.output)
        return Stack(url=url, workdir=workdir, secret=secret, records=records, engines=urls)

    yield start
    for engine in engines:
        engine.kill()
        engine.wait(timeout=10)
