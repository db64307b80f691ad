"""Streams that open at once and stay alive while the gateway waits (cold loads, load queues, prefill).

Coding agents send 20k-token prompts; on a slow host the engine says nothing for minutes, and a client that
has not even seen response headers gives up and retries. A streaming request therefore gets its headers and
the dialect's opening events immediately, then a keep-alive event every ``keepalive_seconds`` until the
engine's first byte (one timer for all waiting streams: :class:`KeepAlives`). Failures after that are the
dialect's final error event (the error middleware writes it); failover to another replica stays possible,
since nothing of the engine's has been sent yet.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType

from aiohttp import web

__all__ = ["OPENAI_KEEPALIVE", "KeepAlives", "Waiting", "open_event_stream"]

logger = logging.getLogger(__name__)
OPENAI_KEEPALIVE = b": keep-alive\n\n"  # an SSE comment: every SSE parser skips it


async def open_event_stream(request: web.Request, headers: dict[str, str] | None = None) -> web.StreamResponse:
    """Send ``200`` and the headers of a server-sent-event stream now."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **(headers or {})}
    )
    await response.prepare(request)
    return response


class KeepAlives:
    """Keep-alives for every stream that waits on its engine, on one timer: a waiting stream costs an entry in a
    dict, not a task of its own, and the timer runs only while some stream waits.

    ``waiting(response, event)`` is the block during which ``event`` goes to ``response`` every ``interval``
    seconds; the caller must not write to the stream itself until the handle's :meth:`Waiting.stop` returned
    (or the block ended). A keep-alive is written whole or not at all, never after ``stop``.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._waiting: dict[web.StreamResponse, tuple[bytes, float]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._writes: set[asyncio.Task[None]] = set()  # keep-alives being written (held: tasks are weak)
        self._loop: asyncio.AbstractEventLoop | None = None  # bound at first use (get_running_loop() costs a getpid)

    def waiting(self, response: web.StreamResponse, event: bytes) -> Waiting:
        """The block (``async with``) during which ``response`` gets ``event`` while its engine is silent."""
        return Waiting(self, response, event)

    def _add(self, response: web.StreamResponse, event: bytes) -> None:
        if not event or self.interval <= 0:
            return
        loop = self._loop or self._bind()
        self._waiting[response] = (event, loop.time() + self.interval)
        if self._timer is None:
            self._timer = loop.call_later(self.interval, self._tick)

    def _bind(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop

    def _discard(self, response: web.StreamResponse) -> None:
        self._waiting.pop(response, None)

    def _tick(self) -> None:
        self._timer = None
        if not self._waiting:
            return
        loop = self._loop or self._bind()
        now = loop.time()
        for response, (event, due) in list(self._waiting.items()):
            if due <= now:
                self._waiting[response] = (event, now + self.interval)
                task = loop.create_task(self._write(response, event))
                self._writes.add(task)
                task.add_done_callback(self._writes.discard)
        nearest = min(due for _, due in self._waiting.values())
        self._timer = loop.call_at(nearest, self._tick)

    async def _write(self, response: web.StreamResponse, event: bytes) -> None:
        if response not in self._waiting:  # stopped since the tick: the engine's bytes may be on their way
            return
        try:
            await response.write(event)  # the bytes reach the transport before the first suspension
        except ConnectionError:
            logger.debug("client went away while waiting for the engine")
            self._waiting.pop(response, None)

    def close(self) -> None:
        """Stop the timer (the app is shutting down)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._waiting.clear()


class Waiting:
    """One stream's stay in :class:`KeepAlives` (an ``async with`` block)."""

    __slots__ = ("_event", "_keepalives", "_response")

    def __init__(self, keepalives: KeepAlives, response: web.StreamResponse, event: bytes) -> None:
        self._keepalives, self._response, self._event = keepalives, response, event

    async def __aenter__(self) -> Waiting:
        self._keepalives._add(self._response, self._event)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._keepalives._discard(self._response)

    async def stop(self) -> None:
        """No keep-alive from now on (idempotent)."""
        self._keepalives._discard(self._response)
