"""A prompt longer than the model's context, through the whole stack (SDK → gateway → real neuron → an engine
that answers as llama.cpp does): every dialect gets the error its clients act on — OpenAI's
``context_length_exceeded``, Anthropic's ``prompt is too long: N tokens > M maximum``, a Responses stream's
``response.failed`` with that code — and nothing is retried: not with merged system messages, not on another
replica. A chat template's refusal still gets the merged retry (``system_messages = "auto"``).
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import anthropic
import openai
import pytest

from helexa.gateway.app import make_gateway_app
from helexa.neuron.app import make_neuron_app
from helexa.neuron.state import manager_key
from tests.conftest import engine_ports, make_config
from tests.fakes.fake_harness import FakeHarness

CONTEXT = 256  # tokens the fake engine holds (a token per 4 bytes of the messages)
LONG = "word " * 2000  # ~2,500 tokens
LATE_SYSTEM = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": LONG},
    {"role": "system", "content": "A reminder in the middle, as Claude Code sends."},
]


@pytest.fixture
async def stack(aiohttp_server, tmp_path, version):
    models = tmp_path / "models"
    models.mkdir()
    (models / "fake-Q4_K_M.gguf").write_bytes(b"GGUF")
    record = tmp_path / "requests.jsonl"
    flags = ["--context", str(CONTEXT), "--record", str(record)]
    catalogue = [  # "strict": a template that refuses late system messages (as Qwen's does)
        {"id": "m", "harness": "fake", "source": "fake-Q4_K_M.gguf", "options": {"flags": flags}},
        {
            "id": "strict",
            "harness": "fake",
            "source": "fake-Q4_K_M.gguf",
            "options": {"flags": [*flags, "--strict-system"]},
        },
    ]
    neurons = []
    apps = []
    for name in ("n1", "n2"):  # two replicas: an overflow must not be tried on the other one
        cfg = make_config(
            neuron={
                "model_dirs": [str(models)],
                "port_range": engine_ports(),
                "token": "nt",
                "preload": ["m", "strict"],
            },
            models=catalogue,
        )
        app = make_neuron_app(cfg, version, {"fake": FakeHarness})
        apps.append(app)
        server = await aiohttp_server(app)
        neurons.append({"name": name, "endpoint": str(server.make_url("")).rstrip("/"), "token": "nt"})
    gateway_cfg = make_config(
        neurons=neurons,
        models=[{"id": "m", "harness": "fake"}, {"id": "strict", "harness": "fake"}],
        gateway={"poll_interval_seconds": 0.1},
    )
    gateway = await aiohttp_server(make_gateway_app(gateway_cfg, version))
    url = str(gateway.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as session:  # both replicas up and polled
        for _ in range(200):
            async with session.get(f"{url}/v1/models") as resp:
                cards = (await resp.json())["data"]
            if cards and all(len(c["loaded_on"]) == 2 for c in cards):
                break
            await asyncio.sleep(0.05)
    yield url, record, apps


def received(record) -> list[dict]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


@pytest.mark.parametrize("stream", [False, True])
async def test_openai_chat_gets_context_length_exceeded_and_nothing_is_retried(stack, stream):
    url, record, apps = stack
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIError) as refused:
        answer = await client.chat.completions.create(model="m", messages=LATE_SYSTEM, stream=stream)
        async for _ in answer:
            pass
    error = refused.value.body if isinstance(refused.value.body, dict) else {}
    if not stream:
        assert refused.value.status_code == 400
    assert error.get("code") == "context_length_exceeded", refused.value
    assert error.get("param") == "messages" and error.get("type") == "invalid_request_error"
    assert error["message"].startswith("This model's maximum context length is 256 tokens. However, your messages")
    # one request reached one engine: no merged-system retry, no second replica
    assert len(received(record)) == 1
    assert not any(r.merge_system for app in apps for r in app[manager_key].records.values())
    await client.close()


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_gets_prompt_is_too_long(stack, stream):
    url, record, _ = stack
    client = anthropic.AsyncAnthropic(base_url=url, api_key="unused", max_retries=0)
    kwargs = {
        "model": "m",
        "max_tokens": 64,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": LONG}],
    }
    if stream:
        with pytest.raises(anthropic.APIStatusError) as refused:
            async with client.messages.stream(**kwargs) as events:
                async for _ in events:
                    pass
    else:
        with pytest.raises(anthropic.BadRequestError) as refused:
            await client.messages.create(**kwargs)
    body = refused.value.body
    assert body["error"]["type"] == "invalid_request_error", body
    message = body["error"]["message"]
    assert message.startswith("prompt is too long: ") and message.endswith(" tokens > 256 maximum"), message
    assert len(received(record)) == 1
    await client.close()


async def test_a_responses_stream_fails_with_the_code(stack):
    url, record, _ = stack
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/responses", json={"model": "m", "input": LONG, "stream": True}) as resp,
    ):
        text = await resp.text()
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    failed = [e for e in events if e.get("type") == "response.failed"]
    assert failed, text[-2000:]
    assert failed[-1]["response"]["error"]["code"] == "context_length_exceeded"
    assert len(received(record)) == 1


async def test_a_templates_refusal_still_gets_the_merged_retry(stack):
    url, record, apps = stack
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    short = [LATE_SYSTEM[0], {"role": "user", "content": "hi"}, LATE_SYSTEM[2]]
    reply = await client.chat.completions.create(model="strict", messages=short)
    assert reply.choices[0].message.content
    sent = received(record)
    assert [m["role"] for m in sent[0]["messages"]] == ["system", "user", "system"]  # refused by the template
    assert [m["role"] for m in sent[1]["messages"]] == ["system", "user"]  # merged, accepted
    assert sum(r.merge_system for app in apps for r in app[manager_key].records.values()) == 1
    # and a strict template with a prompt that is too long: the merged retry, then the overflow, still final
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(model="strict", messages=LATE_SYSTEM)
    assert refused.value.body["code"] == "context_length_exceeded"
    await client.close()
