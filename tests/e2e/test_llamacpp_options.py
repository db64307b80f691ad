"""llama.cpp options that work: llama-server flags in extra_args reach the engine, chat_template replaces the
GGUF's own template, and a flag the bundled server does not take is refused before anything starts."""

from __future__ import annotations

import aiohttp
import openai

from helexa.engine.plugins import get_harnesses, get_plugin_manager
from helexa.neuron.app import make_neuron_app
from helexa.neuron.state import manager_key
from tests.conftest import engine_ports, make_config

TEMPLATE = "{% for m in messages %}<<{{ m.role }}>>{{ m.content }}{% endfor %}<<assistant>>"


def neuron_config(models_dir, models):
    return make_config(
        neuron={"model_dirs": [str(models_dir)], "port_range": engine_ports(), "token": "t", "demo": False},
        models=models,
    )


async def test_extra_args_and_chat_template_reach_llama_server(aiohttp_server, smollm2_gguf, version):
    model = {
        "id": "smol",
        "harness": "llamacpp",
        "source": str(smollm2_gguf),
        "options": {
            "ctx_size": 2048,
            "parallel": 1,
            "chat_template": TEMPLATE,
            "extra_args": ["--temp", "0", "-s", "7"],
        },
    }
    app = make_neuron_app(neuron_config(smollm2_gguf.parent, [model]), version, get_harnesses(get_plugin_manager()))
    neuron = await aiohttp_server(app)
    url = str(neuron.make_url("")).rstrip("/")
    headers = {"Authorization": "Bearer t"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(f"{url}/models/load", json={"model_id": "smol"}) as resp:
            assert resp.status == 200, await resp.text()
        engine = app[manager_key].records["smol"].endpoint.removesuffix("/v1")
        secret = app[manager_key].credentials.headers(engine)  # the engine answers only its neuron
        messages = {"messages": [{"role": "user", "content": "x"}]}
        async with session.post(f"{engine}/apply-template", json=messages, headers=secret) as r:
            prompt = (await r.json())["prompt"]
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="t", max_retries=0)
    replies = {
        (
            await client.chat.completions.create(
                model="smol", messages=[{"role": "user", "content": "Hello!"}], max_tokens=16
            )
        )
        .choices[0]
        .message.content
        for _ in range(3)
    }
    assert len(replies) == 1, replies  # --temp 0 took effect: the same answer every time, no per-request temperature
    assert prompt == "<<user>>x<<assistant>>", prompt  # ours, not the GGUF's ChatML template
    await client.close()


async def test_a_flag_the_bundled_server_does_not_take_is_refused(aiohttp_client, smollm2_gguf, version, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no llama-server on PATH: the bundled server would run
    model = {"id": "smol", "harness": "llamacpp", "source": str(smollm2_gguf), "options": {"extra_args": ["--bogus"]}}
    harnesses = get_harnesses(get_plugin_manager())
    client = await aiohttp_client(make_neuron_app(neuron_config(smollm2_gguf.parent, [model]), version, harnesses))
    resp = await client.post("/models/load", json={"model_id": "smol"}, headers={"Authorization": "Bearer t"})
    error = (await resp.json())["error"]
    assert resp.status == 422 and error["kind"] == "invalid_options", error
    assert "'--bogus'" in error["message"] and "--temp" in error["message"]
