"""Lifecycle without races: every load request gets an answer, and /models stays bounded."""

from __future__ import annotations

import asyncio

from tests.neuron.test_lifecycle import engine, load, wait_status

SLOW = {"flags": ["--startup-delay", "1.0"]}


async def test_an_unload_during_a_load_answers_every_waiting_load_with_409(neuron):
    client = await neuron()
    loads = [asyncio.create_task(load(client, options=SLOW)) for _ in range(5)]
    await wait_status(client, "fake-model", "loading")
    unload = await client.post("/models/unload", json={"model_id": "fake-model"})
    assert unload.status == 200
    answers = await asyncio.wait_for(asyncio.gather(*loads), 10)
    for resp in answers:
        assert resp.status == 409, await resp.text()
        error = (await resp.json())["error"]
        assert error["code"] == "load_cancelled" and "cancelled by an unload" in error["message"]
    models = (await (await client.get("/models")).json())["models"]
    assert [m["status"] for m in models] == ["unloaded"]
    assert (await load(client)).status == 200  # and the next load works


async def test_concurrent_loads_of_one_id_with_different_specs_are_409(neuron, models_dir):
    (models_dir / "other-Q8_0.gguf").write_bytes(b"GGUF" + b"\0" * 1024)
    client = await neuron()
    first = asyncio.create_task(load(client, options=SLOW))
    await wait_status(client, "fake-model", "loading")
    other = await load(client, source="other-Q8_0.gguf", options=SLOW)
    assert other.status == 409
    message = (await other.json())["error"]["message"]
    assert "source ('fake-Q4_K_M.gguf' vs 'other-Q8_0.gguf')" in message
    same = await load(client, options=SLOW)  # the same spec shares the load in progress
    assert same.status == 200 and (await first).status == 200


async def test_refused_loads_do_not_pile_up(neuron):
    client = await neuron()
    for i in range(300):
        resp = await load(client, f"missing-{i}", source="missing-" + "x" * 1000 + ".gguf")
        assert resp.status == 422
    text = await (await client.get("/models")).text()
    assert len(text) < 2000, len(text)


async def test_control_bytes_in_a_source_are_refused_and_leave_no_record(neuron):
    client = await neuron()
    resp = await load(client, "nul", source="fake\u0000.gguf")
    assert resp.status == 400 and (await resp.json())["error"]["param"] == "source"
    _, manager = engine(client)
    assert "nul" not in manager.records
    assert all(m["status"] != "loading" for m in (await (await client.get("/models")).json())["models"])


async def test_an_engines_text_error_reaches_the_client_as_json_with_its_status(neuron):
    client = await neuron()
    assert (await load(client)).status == 200
    resp = await client.post("/v1/completions", json={"model": "fake-model", "prompt": "x"})  # the fake has no route
    assert resp.status == 404 and resp.content_type == "application/json"
    assert resp.headers["x-helexa-origin"] == "engine"
    error = (await resp.json())["error"]
    assert error["message"] == "engine: 404: Not Found" and error["code"] == "engine_error"
