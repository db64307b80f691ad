"""The demo model on real llama.cpp gets its whole trained context with one KV cache for both slots, the card
publishes it, and a prompt longer than it gets each dialect's own overflow error — from llama.cpp's real answer."""

from __future__ import annotations

import anthropic
import openai
import pytest

from helexa.engine.plugins import get_harnesses, get_plugin_manager
from helexa.gateway.app import make_gateway_app
from helexa.gateway.state import lifecycle_key
from helexa.neuron.app import make_neuron_app
from helexa.neuron.demo import with_demo_model
from tests.conftest import engine_ports, make_config, until

MODEL = "smollm2-135m-instruct"
TRAINED = 8192  # SmolLM2-135M's trained context (its GGUF header)


@pytest.fixture
async def demo(aiohttp_server, demo_models_dir, version):
    neuron_cfg = make_config(neuron={"model_dirs": [str(demo_models_dir)], "port_range": engine_ports(), "token": "t"})
    neuron_cfg = with_demo_model(neuron_cfg)  # what helexa run --role neuron offers with no [[models]]
    neuron_app = make_neuron_app(neuron_cfg, version, get_harnesses(get_plugin_manager()))
    neuron = await aiohttp_server(neuron_app)
    gateway_cfg = make_config(
        neurons=[{"name": "cpu", "endpoint": str(neuron.make_url("")).rstrip("/"), "token": "t"}],
        models=[{"id": MODEL, "harness": "llamacpp", "vram_mb": 400}],
        gateway={"poll_interval_seconds": 0.2},
    )
    gateway_app = make_gateway_app(gateway_cfg, version)
    gateway = await aiohttp_server(gateway_app)
    return str(gateway.make_url("")).rstrip("/"), gateway_app


async def test_the_demo_model_has_its_whole_context_and_says_so(demo):
    url, gateway_app = demo
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
    # about 5,000 tokens: more than the 4,096 a slot had before, less than the trained 8,192
    words = "The quick brown fox jumps over the lazy dog. " * 420
    reply = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": words + "Say ok."}], max_tokens=4
    )
    assert 4096 < reply.usage.prompt_tokens < TRAINED, reply.usage

    registry = gateway_app[lifecycle_key].registry
    await until(lambda: registry.context_lengths.get(MODEL) == TRAINED, 10, "the engine's context reported")
    card = (await client.models.retrieve(MODEL)).model_extra
    assert card["context_length"] == TRAINED, card
    await client.close()


async def test_a_prompt_longer_than_the_context_gets_each_dialects_error(demo):
    url, _ = demo
    too_long = "The quick brown fox jumps over the lazy dog. " * 1000  # about 10,000 tokens
    sdk = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": too_long}], max_tokens=4)
    error = refused.value.body
    assert error["code"] == "context_length_exceeded" and error["n_ctx"] == TRAINED, error
    assert error["message"].startswith(f"This model's maximum context length is {TRAINED} tokens.")
    claude = anthropic.AsyncAnthropic(base_url=url, api_key="unused", max_retries=0, timeout=300)
    with pytest.raises(anthropic.APIStatusError) as refused_stream:
        async with claude.messages.stream(
            model=MODEL, max_tokens=4, messages=[{"role": "user", "content": too_long}]
        ) as events:
            async for _ in events:
                pass
    message = refused_stream.value.body["error"]["message"]
    assert message.startswith("prompt is too long: ") and message.endswith(f" tokens > {TRAINED} maximum"), message
    await sdk.close()
    await claude.close()


async def test_count_tokens_is_the_engines_own_count_with_system_and_tools(demo):
    url, _ = demo
    claude = anthropic.AsyncAnthropic(base_url=url, api_key="unused", max_retries=0, timeout=300)
    request = {
        "model": MODEL,
        "system": "You are a careful assistant. Use the tools when they help.",
        "messages": [{"role": "user", "content": "What is the weather in Oslo?"}],
        "tools": [
            {
                "name": "get_weather",
                "description": "The current weather of a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            }
        ],
    }
    counted = await claude.messages.count_tokens(**request)
    sent = await claude.messages.create(max_tokens=1, **request)
    assert counted.input_tokens == sent.usage.input_tokens, (counted, sent.usage)
    longer = await claude.messages.count_tokens(**{**request, "system": request["system"] * 3})
    assert longer.input_tokens > counted.input_tokens + 20  # the system prompt is in the count
    # (SmolLM2's template renders no tools: the engine's prompt has none, and neither does the count)
    await claude.close()
