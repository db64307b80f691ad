"""The external harness: a server helexa does not start, checked and then relayed to."""

from __future__ import annotations

import pytest
from aiohttp import web

from helexa import Inventory, ModelSpec
from helexa.errors import PreflightError
from helexa_external import External
from tests.conftest import free_port


async def test_external_server_is_probed_and_remembered(aiohttp_server):
    app = web.Application()

    async def health(request):
        return web.json_response({"status": "ok"})

    app.router.add_get("/health", health)
    server = await aiohttp_server(app)
    base = str(server.make_url("/v1"))
    harness = External()
    spec = ModelSpec(model_id="ext", harness="external", source=base)
    plan = await harness.preflight(spec, Inventory())
    assert await harness.load(spec, plan) == base
    assert (await harness.state("ext")) == "ready"
    await harness.unload("ext")
    assert (await harness.state("ext")) == "stopped"


async def test_external_source_must_be_a_url():
    with pytest.raises(PreflightError) as info:
        await External().preflight(ModelSpec(model_id="ext", source="not a url"), Inventory())
    assert info.value.kind == "source_missing"


async def test_unreachable_external_server_fails_the_load():
    harness = External()
    spec = ModelSpec(model_id="ext", source=f"http://127.0.0.1:{free_port()}/v1", options={"timeout_s": 2})
    plan = await harness.preflight(spec, Inventory())
    with pytest.raises(RuntimeError, match="is not reachable"):
        await harness.load(spec, plan)
