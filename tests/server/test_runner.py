"""Graceful drain: listeners stop at once, in-flight requests finish within the grace period, then close."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web

from helexa.server.app import base_app
from helexa.server.runner import Listener, serve


def slow_app(version, seconds: float, entered: asyncio.Event, cancelled: list) -> web.Application:
    app = base_app(role="neuron", version=version, max_body_bytes=1024)

    async def slow(request):
        entered.set()
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return web.json_response({"done": True})

    app.router.add_get("/slow", slow)
    return app


async def start(app: web.Application, grace: float):
    stop = asyncio.Event()
    ready: asyncio.Future = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(
            [Listener("test", app, "127.0.0.1", 0)],
            grace=grace,
            stop=stop,
            on_ready=ready.set_result,
            handle_signals=False,
        )
    )
    ports = await asyncio.wait_for(ready, 5)
    return task, stop, f"http://127.0.0.1:{ports['test']}"


async def test_in_flight_request_completes_and_new_ones_are_refused(version):
    entered, cancelled = asyncio.Event(), []
    task, stop, base = await start(slow_app(version, 0.5, entered, cancelled), grace=5)
    async with aiohttp.ClientSession() as session:
        in_flight = asyncio.create_task(session.get(f"{base}/slow"))
        await asyncio.wait_for(entered.wait(), 5)
        stop.set()
        await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as fresh:
            with pytest.raises(aiohttp.ClientConnectorError):
                await fresh.get(f"{base}/healthz")
        resp = await asyncio.wait_for(in_flight, 5)
        assert resp.status == 200
        assert await resp.json() == {"done": True}
    await asyncio.wait_for(task, 5)
    assert not cancelled


async def test_requests_past_the_grace_period_are_cancelled(version):
    entered, cancelled = asyncio.Event(), []
    task, stop, base = await start(slow_app(version, 30, entered, cancelled), grace=0.3)
    async with aiohttp.ClientSession() as session:
        in_flight = asyncio.create_task(session.get(f"{base}/slow"))
        await asyncio.wait_for(entered.wait(), 5)
        began = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, 5)
        assert time.monotonic() - began < 3
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(in_flight, 5)
    assert cancelled == [True]


async def test_bind_failure_raises_and_stops_what_started(version):
    app1 = base_app(role="a", version=version, max_body_bytes=1024)
    app2 = base_app(role="b", version=version, max_body_bytes=1024)
    task, stop, base = await start(base_app(role="c", version=version, max_body_bytes=1024), grace=1)
    port = int(base.rsplit(":", 1)[1])
    with pytest.raises(OSError):
        await serve(
            [Listener("a", app1, "127.0.0.1", 0), Listener("b", app2, "127.0.0.1", port)],
            grace=1,
            handle_signals=False,
        )
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_streams_still_running_when_grace_ends_get_a_final_error_event_and_the_drain_is_bounded(version):
    app = base_app(role="gateway", version=version, max_body_bytes=1024)

    async def endless(request):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        while True:  # a generation that would outlive any grace period
            await resp.write(b'data: {"choices": [{"delta": {"content": "x"}}]}\n\n')
            await asyncio.sleep(0.05)

    async def anthropic(request):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'event: message_start\ndata: {"type": "message_start"}\n\n')
        await asyncio.sleep(3600)

    app.router.add_get("/v1/stream", endless)
    app.router.add_post("/v1/messages", anthropic)
    task, stop, base = await start(app, grace=1.0)
    async with aiohttp.ClientSession() as session:
        openai_stream = await session.get(f"{base}/v1/stream")
        anthropic_stream = await session.post(f"{base}/v1/messages", json={})
        await openai_stream.content.readline()
        began = time.monotonic()
        stop.set()
        openai_text, anthropic_text = await asyncio.wait_for(
            asyncio.gather(openai_stream.text(), anthropic_stream.text()), 5
        )
        await asyncio.wait_for(task, 5)
        took = time.monotonic() - began
    assert 1.0 <= took < 1.0 + 2.0, took
    last = openai_text.strip().split("\n\n")[-1]
    assert last.startswith("data: {") and "shutting down" in last and '"error"' in last
    last = anthropic_text.strip().split("\n\n")[-1]
    assert last.startswith("event: error") and "overloaded_error" in last
