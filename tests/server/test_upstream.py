"""The neuron's upstream calls: a request is sent to an engine once, dead engines are 502, answers read whole are
capped."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from helexa.errors import UpstreamError
from helexa.server.upstream import AnswerTooLarge, open_upstream, read_capped
from tests.conftest import free_port


async def test_a_request_dropped_after_it_reached_the_engine_is_not_sent_again(aiohttp_server):
    calls = {"n": 0}

    async def handler(request):
        calls["n"] += 1
        request.transport.close()  # an engine that died mid-generation: it had the request
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(UpstreamError, match="is not reachable") as info:
            await open_upstream(session, str(server.make_url("/v1/chat/completions")), b"{}", {})
    assert info.value.status == 502
    assert calls["n"] == 1  # never a generation twice


async def test_an_engine_redirect_is_not_followed(aiohttp_server):
    hits = {"elsewhere": 0}

    async def redirect(request):
        raise web.HTTPTemporaryRedirect("/elsewhere")

    async def elsewhere(request):
        hits["elsewhere"] += 1
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/x", redirect)
    app.router.add_post("/elsewhere", elsewhere)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        resp = await open_upstream(session, str(server.make_url("/x")), b"{}", {})
        async with resp:
            assert resp.status == 307
    assert hits["elsewhere"] == 0


async def test_engine_not_listening_is_a_502_without_retries():
    async with aiohttp.ClientSession() as session:
        with pytest.raises(UpstreamError) as info:
            await open_upstream(session, f"http://127.0.0.1:{free_port()}/x", b"{}", {})
    assert info.value.status == 502


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_an_answer_read_whole_is_capped(aiohttp_server, chunked):
    async def big(request):
        if not chunked:
            return web.Response(body=b"x" * 300_000)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(100):
            await response.write(b"x" * 10_000)
        return response

    app = web.Application()
    app.router.add_get("/big", big)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url("/big")) as resp:
            with pytest.raises(AnswerTooLarge, match="engine x sent an answer of .*at most 100000 are read"):
                await read_capped(resp, 100_000, "engine x")
        async with session.get(server.make_url("/big")) as resp:
            assert len(await read_capped(resp, 1_000_000, "engine x")) == (1_000_000 if chunked else 300_000)
