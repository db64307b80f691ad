"""Run the ACP agent on this process's stdin and stdout until the editor closes them."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import sys
import threading
from pathlib import Path
from typing import Any

import aiohttp
from acp import run_agent, stdio_streams

from helexa.acp.agent import HelexaAgent
from helexa.acp.commands import adopt_orphans
from helexa.acp.sessions import SessionStore
from helexa.acp.transport import LineTransport
from helexa.acp.turns import Settings
from helexa.acp.upstream import Upstream

__all__ = ["MESSAGE_LIMIT", "serve"]

log = logging.getLogger("helexa.acp")

MESSAGE_LIMIT = 16 * 1024 * 1024  # bytes in one JSON-RPC line (prompts with embedded files are large)


async def serve(url: str, api_key: str, settings: Settings, sessions_dir: Path | None = None) -> None:
    """Serve ACP over stdio against the OpenAI-compatible API at ``url``; returns at the end of input.

    stdout carries the protocol only: logs go to stderr (editors show it as the agent's log)."""
    if not adopt_orphans():
        log.warning(
            "cannot become the reaper of what commands leave behind (not Linux?): a command's background "
            "processes that leave its process group may outlive their turn"
        )
    reader, writer = await stdio_streams(limit=MESSAGE_LIMIT) if _piped() else _file_streams(MESSAGE_LIMIT)
    store = SessionStore(sessions_dir) if sessions_dir is not None else None
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        agent = HelexaAgent(Upstream(http, url, api_key), settings, store)
        log.info(
            "helexa acp ready: models from %s/v1/models%s",
            agent.upstream.url,
            f", sessions kept in {sessions_dir}" if store else "",
        )
        await run_agent(agent, LineTransport(reader, writer, MESSAGE_LIMIT))


def _piped() -> bool:
    """Whether stdin and stdout are pipes, sockets or terminals (as an editor starts the agent), not files."""
    return not any(stat.S_ISREG(os.fstat(fd).st_mode) for fd in (0, 1))


class _FileWriter:
    """stdout when it is a regular file (``helexa acp < session.jsonl > out.jsonl``): plain blocking writes."""

    def write(self, data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

    async def drain(self) -> None:
        """Nothing to wait for: writes went straight to the file."""

    def close(self) -> None:
        sys.stdout.buffer.flush()


def _file_streams(limit: int) -> tuple[asyncio.StreamReader, Any]:
    """Streams over stdin and stdout when either is a regular file, which asyncio's pipe transports refuse: a
    thread feeds stdin to the reader."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit)

    def feed() -> None:
        try:
            while data := sys.stdin.buffer.read1(1 << 16):
                loop.call_soon_threadsafe(reader.feed_data, data)
        finally:
            loop.call_soon_threadsafe(reader.feed_eof)

    threading.Thread(target=feed, name="acp-stdin", daemon=True).start()
    return reader, _FileWriter()
