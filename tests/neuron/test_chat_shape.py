"""System messages after the first turn (keep / merge / auto with a merged retry) and bare-JSON tool calls,
through a real neuron in front of a fake engine process."""

from __future__ import annotations

import anthropic
import openai
import pytest

from helexa.gateway.app import make_gateway_app
from helexa.neuron.app import make_neuron_app
from helexa.neuron.chat_shape import shape_chat_request
from helexa.neuron.state import manager_key
from helexa.translate.chat import has_late_system_message, merge_system_messages
from helexa.wire.neuron import ModelSpec
from tests.conftest import engine_ports, make_config
from tests.fakes.fake_harness import FakeHarness
from tests.gateway.test_dialects_stack import engine_last_request

LATE = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hi"},
    {"role": "system", "content": [{"type": "text", "text": "Today is Tuesday."}]},
]


def test_merging_folds_every_system_message_into_the_leading_one():
    assert has_late_system_message(LATE) and not has_late_system_message(LATE[:2])
    assert merge_system_messages(LATE) == [
        {"role": "system", "content": "Be brief.\n\nToday is Tuesday."},
        {"role": "user", "content": "hi"},
    ]


def test_requests_that_need_nothing_are_the_same_bytes():
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    assert shape_chat_request(body, ModelSpec(model_id="m")).body is body
    late = b'{"model": "m", "messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}'
    assert shape_chat_request(late, ModelSpec(model_id="m", system_messages="keep")).body is late
    auto = shape_chat_request(late, ModelSpec(model_id="m"))
    assert auto.body is late and auto.fallback is not None
    assert shape_chat_request(late, ModelSpec(model_id="m"), merge_learned=True).body == auto.fallback
    assert shape_chat_request(late, ModelSpec(model_id="m", system_messages="merge")).body == auto.fallback


@pytest.fixture
async def neuron(aiohttp_server, tmp_path, version):
    """``await neuron(flags, **model_fields)`` -> (neuron url, app) serving model "m" on a fake engine."""

    async def make(flags: list[str], **fields):
        models = tmp_path / "models"
        models.mkdir(exist_ok=True)
        (models / "fake-Q4_K_M.gguf").write_bytes(b"GGUF")
        entry = {"id": "m", "harness": "fake", "source": "fake-Q4_K_M.gguf", "options": {"flags": flags}, **fields}
        cfg = make_config(neuron={"model_dirs": [str(models)], "port_range": engine_ports()}, models=[entry])
        app = make_neuron_app(cfg, version, {"fake": FakeHarness})
        server = await aiohttp_server(app)
        return str(server.make_url("")).rstrip("/"), app

    return make


@pytest.mark.parametrize("stream", [False, True])
async def test_auto_retries_merged_when_the_engine_refuses_late_system_messages(neuron, stream):
    url, app = await neuron(["--strict-system", "--reply", "ok"])
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    for _ in range(2):
        if stream:
            text = ""
            async for chunk in await client.chat.completions.create(model="m", messages=LATE, stream=True):
                text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
        else:
            text = (await client.chat.completions.create(model="m", messages=LATE)).choices[0].message.content
        assert text == "ok"
        sent = (await engine_last_request(app, "m"))["messages"]
        assert [m["role"] for m in sent] == ["system", "user"]
    assert app[manager_key].records["m"].merge_system is True


async def test_keep_sends_late_system_messages_in_place(neuron):
    url, app = await neuron(["--reply", "ok"], system_messages="keep")
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    await client.chat.completions.create(model="m", messages=LATE)
    assert [m["role"] for m in (await engine_last_request(app, "m"))["messages"]] == ["system", "user", "system"]


BARE = '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```'
OPENAI_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


async def test_bare_json_answers_are_tool_calls_in_all_three_dialects(neuron, aiohttp_server, version):
    url, _ = await neuron(["--reply", BARE, "--chunk-size", "3"])
    gateway_cfg = make_config(
        neurons=[{"name": "n1", "endpoint": url}],
        models=[{"id": "m", "harness": "fake"}],
        gateway={"poll_interval_seconds": 0.1},
    )
    gateway = await aiohttp_server(make_gateway_app(gateway_cfg, version))
    base = str(gateway.make_url("")).rstrip("/")
    oai = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    question = [{"role": "user", "content": "Weather in Paris?"}]

    chat = await oai.chat.completions.create(model="m", messages=question, tools=OPENAI_TOOLS)
    call = chat.choices[0].message.tool_calls[0]
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city":"Paris"}')
    assert chat.choices[0].finish_reason == "tool_calls"
    streamed = []
    async for chunk in await oai.chat.completions.create(model="m", messages=question, tools=OPENAI_TOOLS, stream=True):
        for c in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            streamed.append(c.function.name)
    assert streamed == ["get_weather"]
    plain = await oai.chat.completions.create(model="m", messages=question)  # no tools offered: text
    assert plain.choices[0].message.content == BARE

    claude = anthropic.AsyncAnthropic(base_url=base, api_key="unused", max_retries=0)
    tools = [
        {"name": "get_weather", "description": "Weather", "input_schema": OPENAI_TOOLS[0]["function"]["parameters"]}
    ]
    message = await claude.messages.create(model="m", max_tokens=64, messages=question, tools=tools)
    assert [(b.type, getattr(b, "input", None)) for b in message.content] == [("tool_use", {"city": "Paris"})]
    assert message.stop_reason == "tool_use"
    async with claude.messages.stream(model="m", max_tokens=64, messages=question, tools=tools) as stream:
        final = await stream.get_final_message()
    assert [(b.type, b.name, b.input) for b in final.content] == [("tool_use", "get_weather", {"city": "Paris"})]

    function = {"type": "function", **OPENAI_TOOLS[0]["function"]}
    response = await oai.responses.create(model="m", input="Weather in Paris?", tools=[function])
    assert [(o.type, o.name, o.arguments) for o in response.output] == [
        ("function_call", "get_weather", '{"city":"Paris"}')
    ]
