"""Streams that open at once and stay alive while the gateway waits (cold loads, load queues, prefill).

Coding agents send 20k-token prompts; on a slow host the engine says nothing for minutes, and a client that
has not even seen response headers gives up and retries. A streaming request therefore gets its headers and
the dialect's opening events immediately, then a keep-alive event every ``keepalive_seconds`` until the
engine's first byte. Failures after that are the dialect's final error event (the error middleware writes
it); failover to another replica stays possible, since nothing of the engine's has been sent yet.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType

from aiohttp import web

__all__ = ["OPENAI_KEEPALIVE", "KeepAlive", "open_event_stream"]

logger = logging.getLogger(__name__)
OPENAI_KEEPALIVE = b": keep-alive\n\n"  # an SSE comment: every SSE parser skips it


async def open_event_stream(request: web.Request, headers: dict[str, str] | None = None) -> web.StreamResponse:
    """Send ``200`` and the headers of a server-sent-event stream now."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **(headers or {})}
    )
    await response.prepare(request)
    return response


class KeepAlive:
    """Writes ``event`` to an open stream every ``interval`` seconds until stopped (or the block ends).

    The caller must not write to the stream itself until :meth:`stop` returned.
    """

    def __init__(self, response: web.StreamResponse, event: bytes, interval: float) -> None:
        self._response, self._event, self._interval = response, event, interval
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> KeepAlive:
        if self._event:
            self._task = asyncio.create_task(self._run(), name="stream keep-alive")
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop writing keep-alives (idempotent)."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        await asyncio.wait([task])  # unlike awaiting it, lets our own cancellation through

    async def _run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self._interval)
                await self._response.write(self._event)
        except ConnectionError:
            logger.debug("client went away while waiting for the engine")
