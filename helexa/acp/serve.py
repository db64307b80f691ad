"""Run the ACP agent on this process's stdin and stdout until the editor closes them."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
from acp import run_agent, stdio_streams

from helexa.acp.agent import HelexaAgent
from helexa.acp.sessions import Store
from helexa.acp.transport import LineTransport
from helexa.acp.upstream import Upstream

__all__ = ["MESSAGE_LIMIT", "serve"]

log = logging.getLogger("helexa.acp")

MESSAGE_LIMIT = 16 * 1024 * 1024  # bytes in one JSON-RPC line (prompts with embedded files are large)


async def serve(
    url: str,
    api_key: str = "",
    *,
    model: str = "",
    mode: str = "code",
    sessions_dir: Path | None = None,
    limit: int = 20_000,
    command_timeout: float = 120.0,
    max_rounds: int = 25,
    max_tokens: int = 0,
) -> None:
    """Serve ACP over stdio against the OpenAI-compatible API at ``url``; returns at the end of input.

    stdout carries the protocol only: logs go to stderr (editors show it as the agent's log)."""
    reader, writer = await stdio_streams(limit=MESSAGE_LIMIT)
    store = Store(sessions_dir) if sessions_dir is not None else None
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        agent = HelexaAgent(
            Upstream(http, url, api_key),
            model=model,
            mode=mode,
            store=store,
            limit=limit,
            command_timeout=command_timeout,
            max_rounds=max_rounds,
            max_tokens=max_tokens,
        )
        log.info(
            "helexa acp ready: models from %s/v1/models%s",
            agent.upstream.url,
            f", sessions kept in {sessions_dir}" if store else "",
        )
        await run_agent(agent, LineTransport(reader, writer, MESSAGE_LIMIT))
