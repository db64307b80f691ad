"""Loops that run until cancelled must end when cancelled — also when the cancel comes as their event is set (on
Python 3.11 ``asyncio.wait_for`` drops that cancel: a batch runner kept a gateway's shutdown waiting forever)."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from helexa.gateway.batch_runner import BatchRunner
from helexa.gateway.metrics import BatchMetrics
from helexa.server.aio import wait_set


async def test_wait_set_says_whether_the_event_came():
    event = asyncio.Event()
    assert await wait_set(event, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_set(event, 5) is True
    assert await wait_set(event, 0) is True  # already set


async def test_a_cancel_that_comes_as_the_event_is_set_is_raised():
    event = asyncio.Event()
    waiting = asyncio.create_task(wait_set(event, 10))
    await asyncio.sleep(0)
    event.set()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


class _Idle:
    """A batch store this process does not run."""

    def may_run(self) -> bool:
        return False


async def test_the_batch_runner_ends_when_cancelled_as_it_is_woken():
    runner = BatchRunner(web.Application(), _Idle(), BatchMetrics(CollectorRegistry()))  # type: ignore[arg-type]
    task = asyncio.create_task(runner.run())
    for _ in range(3):
        await asyncio.sleep(0)
    runner.wake.set()  # a line ended …
    task.cancel()  # … just as the gateway stops
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 2)
    assert task.cancelled()
