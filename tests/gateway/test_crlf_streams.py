"""Engines that frame server-sent events with CRLF: events pass as they come (not held until the stream ends),
through the neuron (normaliser on and off) and the gateway, in all three dialects."""

from __future__ import annotations

import time

import anthropic
import openai
import pytest

from helexa.gateway.app import make_gateway_app
from helexa.neuron.app import make_neuron_app
from tests.conftest import engine_ports, make_config
from tests.fakes.fake_harness import FakeHarness

REPLY = "one two three four five six seven eight"


@pytest.fixture
async def crlf_stack(aiohttp_server, tmp_path, version):
    models = tmp_path / "models"
    models.mkdir()
    (models / "fake-Q4_K_M.gguf").write_bytes(b"GGUF")
    flags = ["--reply", REPLY, "--chunk-size", "4", "--chunk-delay", "0.1", "--crlf"]
    catalogue = [
        {"id": m, "harness": "fake", "source": "fake-Q4_K_M.gguf", "options": {"flags": flags}, "normalise": norm}
        for m, norm in (("normalised", True), ("raw", False))
    ]
    neuron_cfg = make_config(
        neuron={"model_dirs": [str(models)], "port_range": engine_ports(), "token": "nt"}, models=catalogue
    )
    neuron = await aiohttp_server(make_neuron_app(neuron_cfg, version, {"fake": FakeHarness}))
    gateway_cfg = make_config(
        neurons=[{"name": "n1", "endpoint": str(neuron.make_url("")).rstrip("/"), "token": "nt"}],
        models=[{"id": m["id"], "harness": "fake"} for m in catalogue],
        gateway={"poll_interval_seconds": 0.1},
    )
    gateway = await aiohttp_server(make_gateway_app(gateway_cfg, version))
    return str(gateway.make_url("")).rstrip("/")


@pytest.mark.parametrize("model", ["normalised", "raw"])
async def test_openai_stream_arrives_progressively(crlf_stack, model):
    client = openai.AsyncOpenAI(base_url=f"{crlf_stack}/v1", api_key="x", max_retries=0)
    await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])  # cold load
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text, arrivals = "", []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
            arrivals.append(time.monotonic())
    assert text == REPLY
    assert len(arrivals) >= 5 and arrivals[-1] - arrivals[0] > 0.5, arrivals  # not all at once at the end
    await client.close()


@pytest.mark.parametrize("model", ["normalised", "raw"])
async def test_anthropic_and_responses_streams_read_crlf_engines(crlf_stack, model):
    claude = anthropic.AsyncAnthropic(base_url=crlf_stack, api_key="x", max_retries=0)
    messages = [{"role": "user", "content": "hi"}]
    async with claude.messages.stream(model=model, max_tokens=64, messages=messages) as stream:
        text = "".join([t async for t in stream.text_stream])
    assert text == REPLY
    client = openai.AsyncOpenAI(base_url=f"{crlf_stack}/v1", api_key="x", max_retries=0)
    async with client.responses.stream(model=model, input="hi") as stream:
        final = await stream.get_final_response()
    assert final.output_text == REPLY
    await client.close()


async def test_an_event_that_never_ends_is_cut_off_with_an_error_event(fleet):
    """An upstream that never sends a blank line cannot grow the gateway's memory: past 8 MiB held back, the
    stream ends with the dialect's error event."""
    from helexa.sse import MAX_EVENT_BYTES, EventFramer, EventTooLarge
    from tests.fakes.fake_neuron import FakeNeuron
    from tests.gateway.conftest import entry

    framer = EventFramer(limit=100)
    assert framer.feed(b"data: 1\n\ndata: 2") == b"data: 1\n\n"
    with pytest.raises(EventTooLarge):
        for _ in range(3):
            framer.feed(b"x" * 60)
    a = FakeNeuron("a", endless_event=MAX_EVENT_BYTES // (1 << 20) + 4)
    a.preload("m")
    client, _ = await fleet([a], models=[entry("m")])
    for path, body in (
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}),
        (
            "/v1/messages",
            {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "stream": True},
        ),
    ):
        resp = await client.post(path, json=body)
        text = (await resp.read()).decode()
        assert resp.status == 200 and "without ending an event" in text, text[-300:]
        assert len(text) < 10_000  # nothing of the endless event was passed on
