"""Both dialects through the whole stack: SDK → gateway → real neuron (normaliser) → fake engine process.

The fake engine streams <think> and <tool_call> markers; the SDKs' own stream parsers must accept every
event, and the message rebuilt from the stream must equal the non-streaming one.
"""

from __future__ import annotations

import aiohttp
import anthropic
import openai
import pytest

from helexa.gateway.app import make_gateway_app
from helexa.neuron.app import make_neuron_app
from helexa.neuron.state import manager_key
from tests.conftest import engine_ports, make_config
from tests.fakes.fake_harness import FakeHarness

REPLY = (
    "<think>The user wants the weather, so I call the tool.</think>Let me check."
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
)
TOOLS_ANTHROPIC = [
    {
        "name": "get_weather",
        "description": "Current weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]


@pytest.fixture
async def stack(aiohttp_server, tmp_path, version):
    models = tmp_path / "models"
    models.mkdir()
    (models / "fake-Q4_K_M.gguf").write_bytes(b"GGUF")
    catalogue = [
        {
            "id": "agent",
            "harness": "fake",
            "source": "fake-Q4_K_M.gguf",
            "options": {"flags": ["--reply", REPLY, "--chunk-size", "5"]},
        }
    ]
    neuron_cfg = make_config(
        neuron={"model_dirs": [str(models)], "port_range": engine_ports(), "token": "nt"}, models=catalogue
    )
    neuron_app = make_neuron_app(neuron_cfg, version, {"fake": FakeHarness})
    neuron = await aiohttp_server(neuron_app)
    gateway_cfg = make_config(
        neurons=[{"name": "n1", "endpoint": str(neuron.make_url("")).rstrip("/"), "token": "nt"}],
        models=[{"id": "agent", "harness": "fake", "aliases": ["helexa-agent"]}],
        gateway={"poll_interval_seconds": 0.1},
    )
    gateway = await aiohttp_server(make_gateway_app(gateway_cfg, version))
    url = str(gateway.make_url("")).rstrip("/")
    yield url, neuron_app
    # engines stop with the neuron app's cleanup


async def engine_last_request(neuron_app, model_id: str = "agent") -> dict:
    """The last chat request the fake engine serving ``model_id`` received."""
    record = neuron_app[manager_key].records[model_id]
    url = record.endpoint.removesuffix("/v1") + "/last-request"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=neuron_app[manager_key].credentials.headers(url)) as r,
    ):
        return await r.json()


async def test_anthropic_thinking_and_tool_use_stream_equals_create(stack):
    url, _ = stack
    client = anthropic.AsyncAnthropic(base_url=url, api_key="unused", max_retries=0)
    kwargs = {
        "model": "helexa-agent",
        "max_tokens": 256,
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "tools": TOOLS_ANTHROPIC,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }
    whole = await client.messages.create(**kwargs)
    assert [b.type for b in whole.content] == ["thinking", "text", "tool_use"]
    assert whole.content[0].thinking == "The user wants the weather, so I call the tool."
    assert whole.content[1].text == "Let me check."
    assert (whole.content[2].name, whole.content[2].input) == ("get_weather", {"city": "Oslo"})
    assert whole.stop_reason == "tool_use"
    assert whole.model == "helexa-agent"

    seen = []
    async with client.messages.stream(**kwargs) as stream:
        async for ev in stream:
            seen.append(ev.type)
        streamed = await stream.get_final_message()
    assert seen[0] == "message_start" and seen[-1] == "message_stop"
    assert "ping" not in seen or seen.index("ping") == 1
    assert {"thinking", "text", "input_json"} <= set(seen)
    rebuilt = [
        (b.type, getattr(b, "thinking", None), getattr(b, "text", None), getattr(b, "input", None))
        for b in streamed.content
    ]
    expected = [
        (b.type, getattr(b, "thinking", None), getattr(b, "text", None), getattr(b, "input", None))
        for b in whole.content
    ]
    assert rebuilt == expected
    assert streamed.stop_reason == whole.stop_reason == "tool_use"
    assert streamed.usage.output_tokens == whole.usage.output_tokens > 0


async def test_anthropic_multi_turn_tool_use_round_trip(stack):
    url, neuron_app = stack
    client = anthropic.AsyncAnthropic(base_url=url, api_key="unused", max_retries=0)
    first = await client.messages.create(
        model="agent", max_tokens=64, tools=TOOLS_ANTHROPIC, messages=[{"role": "user", "content": "Weather in Oslo?"}]
    )
    tool_use = next(b for b in first.content if b.type == "tool_use")
    history = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "12°C and rain"}]},
    ]
    final = await client.messages.create(model="agent", max_tokens=64, tools=TOOLS_ANTHROPIC, messages=history)
    assert final.content
    sent = (await engine_last_request(neuron_app))["messages"]
    assert sent[0] == {"role": "user", "content": "Weather in Oslo?"}
    assert sent[1]["role"] == "assistant" and sent[1]["content"] == "Let me check."
    assert sent[1]["tool_calls"] == [
        {"id": tool_use.id, "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
    ]
    assert sent[2] == {"role": "tool", "tool_call_id": tool_use.id, "content": "12°C and rain"}


async def test_openai_multi_turn_tool_use_round_trip(stack):
    url, neuron_app = stack
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": TOOLS_ANTHROPIC[0]["input_schema"]}}
    ]
    first = await client.chat.completions.create(
        model="agent", messages=[{"role": "user", "content": "Weather?"}], tools=tools
    )
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    history = [
        {"role": "user", "content": "Weather?"},
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "12°C"},
    ]
    final = await client.chat.completions.create(model="agent", messages=history, tools=tools)
    assert final.choices[0].message.content == "Let me check."
    sent = (await engine_last_request(neuron_app))["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call.id
    assert sent[2] == {"role": "tool", "tool_call_id": call.id, "content": "12°C"}


async def test_anthropic_errors_use_anthropic_envelope(stack):
    url, _ = stack
    client = anthropic.AsyncAnthropic(base_url=url, api_key="unused", max_retries=0)
    cases = [
        ({"model": "agent", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"model": "agent", "max_tokens": 5, "messages": [{"role": "bot", "content": "x"}]}, "messages[0].role"),
        (
            {"model": "agent", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "video"}]}]},
            "messages[0].content[0].type",
        ),
        (
            {
                "model": "agent",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}],
                "tools": TOOLS_ANTHROPIC,
                "tool_choice": {"type": "tool", "name": "nope"},
            },
            "tool_choice.name",
        ),
    ]
    async with aiohttp.ClientSession() as session:
        for body, field in cases:
            async with session.post(
                f"{url}/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"}
            ) as resp:
                assert resp.status == 400
                payload = await resp.json()
                assert payload["type"] == "error" and payload["error"]["type"] == "invalid_request_error"
                assert field in payload["error"]["message"], payload
    with pytest.raises(anthropic.NotFoundError) as info:
        await client.messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["error"]["type"] == "not_found_error"


RESPONSES_TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Current weather",
        "parameters": TOOLS_ANTHROPIC[0]["input_schema"],
    }
]


def summary(response) -> list[tuple]:
    out = []
    for item in response.output:
        if item.type == "reasoning":
            out.append(("reasoning", item.content[0].text))
        elif item.type == "message":
            out.append(("message", item.content[0].text))
        else:
            out.append(("function_call", item.name, item.arguments, item.call_id))
    return out


async def test_responses_api_stream_equals_create(stack):
    url, _ = stack
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    kwargs = {"model": "agent", "instructions": "Use tools.", "input": "Weather in Oslo?", "tools": RESPONSES_TOOLS}
    whole = await client.responses.create(**kwargs)
    assert whole.status == "completed"
    got = summary(whole)
    assert got[0] == ("reasoning", "The user wants the weather, so I call the tool.")
    assert got[1] == ("message", "Let me check.")
    assert got[2][:3] == ("function_call", "get_weather", '{"city":"Oslo"}')
    assert whole.output_text == "Let me check."
    assert whole.usage.output_tokens > 0

    types = []
    async with client.responses.stream(**kwargs) as stream:
        async for ev in stream:
            types.append(ev.type)
        final = await stream.get_final_response()
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert "response.output_text.delta" in types and "response.function_call_arguments.delta" in types
    assert [s[:3] for s in summary(final)] == [s[:3] for s in got]
    assert final.output_text == whole.output_text

    raw = await client.responses.create(**kwargs, stream=True)
    sequence = [ev.sequence_number async for ev in raw]
    assert sequence == list(range(len(sequence)))


async def test_responses_function_call_output_round_trip(stack):
    url, neuron_app = stack
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    first = await client.responses.create(model="agent", input="Weather?", tools=RESPONSES_TOOLS)
    call = next(item for item in first.output if item.type == "function_call")
    follow_up = [
        {"role": "user", "content": "Weather?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "12°C"},
    ]
    final = await client.responses.create(model="agent", input=follow_up, tools=RESPONSES_TOOLS)
    assert final.output_text == "Let me check."
    sent = (await engine_last_request(neuron_app))["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call.call_id
    assert sent[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "12°C"}


async def test_responses_bad_requests_name_the_field(stack):
    url, _ = stack
    cases = [
        ({"model": "agent"}, "input"),
        ({"model": "agent", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"model": "agent", "input": [{"type": "bogus_item"}]}, "input[0].type"),
        ({"model": "agent", "input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"model": "agent", "input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        (
            {"model": "agent", "input": "x", "tools": [{"type": "namespace", "name": "ns", "tools": [{"name": 3}]}]},
            "tools[0].tools[0].name",
        ),
        (
            {"model": "agent", "input": "x", "tools": [{"type": "function", "name": "f", "parameters": "no"}]},
            "tools[0].parameters",
        ),
    ]
    async with aiohttp.ClientSession() as session:
        for body, field in cases:
            async with session.post(f"{url}/v1/responses", json=body) as resp:
                assert resp.status == 400, body
                error = (await resp.json())["error"]
                assert error["type"] == "invalid_request_error" and field in error["message"], error
