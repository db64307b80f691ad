"""Waiting in loops that run until their task is cancelled."""

from __future__ import annotations

import asyncio

__all__ = ["wait_set"]


async def wait_set(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` passed; whether it was set.

    For the loops that run until cancelled (pollers, the batch runner): on Python 3.11, ``asyncio.wait_for`` returns
    the result when a cancellation arrives just as the event is set — the cancellation is lost and the loop runs on
    forever, holding up the shutdown that cancelled it. Here the wait is awaited in the caller's own task, so a
    cancellation is always raised.
    """
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
