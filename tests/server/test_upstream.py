"""The neuron's upstream calls: stale keep-alive connections are retried, dead engines are 502."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from helexa.errors import UpstreamError
from helexa.server.upstream import STALE_RETRIES, open_upstream
from tests.conftest import free_port


async def test_connection_dropped_before_the_response_is_retried(aiohttp_server):
    calls = {"n": 0}

    async def handler(request):
        calls["n"] += 1
        if calls["n"] <= STALE_RETRIES:
            request.transport.close()  # as a server does with a keep-alive connection it has timed out
            return web.Response()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        resp = await open_upstream(session, str(server.make_url("/v1/chat/completions")), b"{}", {})
        async with resp:
            assert await resp.json() == {"ok": True}
    assert calls["n"] == STALE_RETRIES + 1


async def test_engine_that_keeps_dropping_is_a_502(aiohttp_server):
    async def handler(request):
        request.transport.close()
        return web.Response()

    app = web.Application()
    app.router.add_post("/x", handler)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(UpstreamError, match="is not reachable"):
            await open_upstream(session, str(server.make_url("/x")), b"{}", {})


async def test_engine_not_listening_is_a_502_without_retries():
    async with aiohttp.ClientSession() as session:
        with pytest.raises(UpstreamError) as info:
            await open_upstream(session, f"http://127.0.0.1:{free_port()}/x", b"{}", {})
    assert info.value.status == 502
