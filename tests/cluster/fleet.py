"""Real ``helexa run`` processes for the cluster tests: neurons serving the demo models on llama.cpp, gateways
on one store, and what the tests ask of them (a chat, ``/fleet``, the neurons' own load counters)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest
import tomli_w

from tests.conftest import engine_ports, free_port, wait_http

SMOL, GEMMA = "smollm2", "gemma"
OPEN, CAPPED, ADMIN = "sk-open", "sk-capped", "sk-admin"
KEYS = [
    {"name": "open", "key": OPEN},
    {"name": "capped", "key": CAPPED, "requests_per_minute": 4},
    {"name": "ops", "key": ADMIN, "scopes": ["admin", "inference"]},
]
CATALOGUE = [{"id": SMOL, "harness": "llamacpp", "vram_mb": 400}, {"id": GEMMA, "harness": "llamacpp", "vram_mb": 700}]


def start_neurons(helexa_process, tmp_path: Path, model_dirs: list[Path], smol_file: str, host: str) -> dict:
    """Two neurons (``n1``, ``n2``) listening on ``host``, both able to load both demo models; returns their
    references for a gateway's ``[[neurons]]`` once they answer."""
    options = {"ctx_size": 1024, "parallel": 2}
    models = [
        {"id": SMOL, "harness": "llamacpp", "source": smol_file, "options": options},
        {"id": GEMMA, "harness": "llamacpp", "source": "gemma-3-270m-q4_k_m.gguf", "options": options},
    ]
    refs = []
    for name in ("n1", "n2"):
        port = free_port()
        section = {
            "listen": f"{host}:{port}",
            "token": f"token-{name}",
            "state_dir": str(tmp_path / name),
            "model_dirs": [str(d) for d in model_dirs],
            "port_range": engine_ports(),
            "demo": False,
        }
        config = tmp_path / f"{name}.toml"
        config.write_text(tomli_w.dumps({"neuron": section, "models": models}))
        helexa_process("run", "--role", "neuron", "--config", str(config))
        refs.append({"name": name, "endpoint": f"http://{host}:{port}", "token": f"token-{name}"})
    for ref in refs:
        wait_http(f"{ref['endpoint']}/healthz", timeout=30)
    return refs


def start_gateway(
    helexa_process, tmp_path: Path, name: str, store: str, neurons: list[dict], host: str = "127.0.0.1", wrap=()
):
    """A gateway called ``name`` on ``store`` in front of ``neurons``, listening on ``host`` (inside the
    namespace ``wrap`` enters, if any); returns ``(url, process)`` once it answers."""
    port = free_port()
    config = tmp_path / f"{name}.toml"
    gateway = {
        "listen": f"{host}:{port}",
        "metrics_listen": f"{host}:{free_port()}",
        "poll_interval_seconds": 1.0,
        "load_timeout_seconds": 240,
    }
    cluster = {"store": store, "name": name, "lease_seconds": 2.0}
    document = {"gateway": gateway, "cluster": cluster, "auth": {"keys": KEYS}, "neurons": neurons}
    config.write_text(tomli_w.dumps({**document, "models": CATALOGUE}))
    proc = helexa_process("run", "--role", "gateway", "--config", str(config), wrap=tuple(wrap))
    url = f"http://{host}:{port}"
    try:
        wait_http(f"{url}/healthz", timeout=30)
    except TimeoutError:
        pytest.fail(f"gateway {name} did not start:\n{helexa_process.output(proc)[-3000:]}")
    return url, proc


def fleet_now(url: str) -> dict:
    """``/fleet`` of the gateway at ``url`` (blocking)."""
    request = urllib.request.Request(f"{url}/fleet", headers={"Authorization": f"Bearer {OPEN}"})
    return json.load(urllib.request.urlopen(request, timeout=5))


def until_agreed(urls: list[str], helexa_process, procs, leader: str | None = None) -> str:
    """Until every gateway of ``urls`` sees them all, both neurons healthy and one leader (``leader``, if
    given); returns the leader's name."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        reports = [fleet_now(url) for url in urls]
        healthy = all(all(n["healthy"] for n in r["neurons"]) for r in reports)
        leaders = {r["cluster"]["leader"] for r in reports}
        if (
            healthy
            and len(leaders) == 1
            and "" not in leaders
            and (leader is None or leaders == {leader})
            and all(len(r["cluster"]["gateways"]) == len(urls) for r in reports)
        ):
            return leaders.pop()
        time.sleep(0.2)
    pytest.fail(
        "the gateways never agreed on a leader with both neurons up:\n"
        + "\n".join(helexa_process.output(proc)[-2000:] for proc in procs)
    )


def loads(neurons: list[dict], model: str) -> int:
    """Successful loads of ``model`` on every neuron, from their own metrics."""
    total = 0
    for ref in neurons:
        text = urllib.request.urlopen(f"{ref['endpoint']}/metrics", timeout=5).read().decode()
        for line in text.splitlines():
            ours = line.startswith("helexa_neuron_model_loads_total{") and f'model="{model}"' in line
            if ours and 'result="loaded"' in line:
                total += int(float(line.rsplit(" ", 1)[1]))
    return total


async def fleet_report(session: aiohttp.ClientSession, url: str) -> dict:
    async with session.get(f"{url}/fleet", headers={"Authorization": f"Bearer {OPEN}"}) as resp:
        return await resp.json()


async def ask(session: aiohttp.ClientSession, url: str, model: str, key: str = OPEN) -> int:
    """One short chat; its status (0: the connection broke, as with a killed gateway)."""
    status, _ = await chat(session, url, model, key)
    return status


async def chat(session: aiohttp.ClientSession, url: str, model: str, key: str = OPEN) -> tuple[int, dict]:
    """One short chat: its status and JSON answer (``(0, {})``: the connection broke)."""
    body = {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "Say hi."}]}
    try:
        async with session.post(
            f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as resp:
            return resp.status, await resp.json(content_type=None)
    except (aiohttp.ClientConnectionError, aiohttp.ServerDisconnectedError):
        return 0, {}


async def until_everyone_sees(session: aiohttp.ClientSession, urls: list[str], model: str, status: str) -> None:
    """Until every gateway of ``urls`` lists ``model`` with ``status`` (its polls saw it)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        cards = []
        for url in urls:
            async with session.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {OPEN}"}) as resp:
                cards += [m for m in (await resp.json())["data"] if m["id"] == model]
        if cards and all(c["status"] != "loaded" for c in cards) == (status == "unloaded"):
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"the gateways never saw {model} {status}")


async def until_loading(session: aiohttp.ClientSession, neurons: list[dict]) -> None:
    """Until some neuron reports a model loading (or loaded)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for ref in neurons:
            headers = {"Authorization": f"Bearer {ref['token']}"}
            async with session.get(f"{ref['endpoint']}/models", headers=headers) as resp:
                states = {m["id"]: m["status"] for m in (await resp.json())["models"]}
            if any(s in ("loading", "loaded") for s in states.values()):
                return
        await asyncio.sleep(0.05)
    pytest.fail("no neuron began a load")
