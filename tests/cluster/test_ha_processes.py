"""Three gateways and two neurons as real processes, on one real Redis, serving the real demo models on llama.cpp.

What an operator running three gateways expects: a burst through all three loads each model once; a key limited to
N requests a minute gets N across the three; the leader SIGKILLed in the middle of cold loads — every request
sent to the other gateways is served, no model is loaded twice, a new leader within 5 s; the store stopped —
loaded models keep answering, a cold load is a 503 at once; the store back — cold loads again.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
import urllib.request

import aiohttp
import pytest
import tomli_w

from tests.conftest import engine_ports, free_port, wait_http

pytestmark = pytest.mark.timeout(600)
SMOL, GEMMA = "smollm2", "gemma"
OPEN, CAPPED, ADMIN = "sk-open", "sk-capped", "sk-admin"


def loads(neurons: dict[str, str], model: str) -> int:
    """Successful loads of ``model`` on every neuron, from their own metrics."""
    total = 0
    for url in neurons.values():
        text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
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
    body = {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "Say hi."}]}
    try:
        async with session.post(
            f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as resp:
            await resp.read()
            return resp.status
    except (aiohttp.ClientConnectionError, aiohttp.ServerDisconnectedError):
        return 0


@pytest.fixture
def ha_fleet(tmp_path, helexa_process, redis_server, demo_models_dir, smollm2_gguf):
    """Two neurons and three gateways (``gw0``..``gw2``), each a ``helexa run`` process; returns
    ``(gateways: name -> (url, process), neurons: name -> url)`` once every gateway sees both neurons."""
    models_on_neurons = [
        {"id": SMOL, "harness": "llamacpp", "source": smollm2_gguf.name, "options": {"ctx_size": 1024, "parallel": 2}},
        {
            "id": GEMMA,
            "harness": "llamacpp",
            "source": "gemma-3-270m-q4_k_m.gguf",
            "options": {"ctx_size": 1024, "parallel": 2},
        },
    ]
    neurons: dict[str, str] = {}
    refs = []
    for name in ("n1", "n2"):
        port = free_port()
        config = tmp_path / f"{name}.toml"
        section = {
            "listen": f"127.0.0.1:{port}",
            "token": f"token-{name}",
            "state_dir": str(tmp_path / name),
            "model_dirs": [str(demo_models_dir), str(smollm2_gguf.parent)],
            "port_range": engine_ports(),
            "demo": False,
        }
        config.write_text(tomli_w.dumps({"neuron": section, "models": models_on_neurons}))
        helexa_process("run", "--role", "neuron", "--config", str(config))
        neurons[name] = f"http://127.0.0.1:{port}"
        refs.append({"name": name, "endpoint": neurons[name], "token": f"token-{name}"})
    for url in neurons.values():
        wait_http(f"{url}/healthz", timeout=30)
    gateways: dict[str, tuple[str, object]] = {}
    catalogue = [
        {"id": SMOL, "harness": "llamacpp", "vram_mb": 400},
        {"id": GEMMA, "harness": "llamacpp", "vram_mb": 700},
    ]
    keys = [
        {"name": "open", "key": OPEN},
        {"name": "capped", "key": CAPPED, "requests_per_minute": 4},
        {"name": "ops", "key": ADMIN, "scopes": ["admin", "inference"]},
    ]
    for i in range(3):
        name, port = f"gw{i}", free_port()
        config = tmp_path / f"{name}.toml"
        config.write_text(
            tomli_w.dumps(
                {
                    "gateway": {
                        "listen": f"127.0.0.1:{port}",
                        "metrics_listen": f"127.0.0.1:{free_port()}",
                        "poll_interval_seconds": 1.0,
                        "load_timeout_seconds": 240,
                    },
                    "cluster": {"store": redis_server.url, "name": name, "lease_seconds": 2.0},
                    "auth": {"keys": keys},
                    "neurons": refs,
                    "models": catalogue,
                }
            )
        )
        proc = helexa_process("run", "--role", "gateway", "--config", str(config))
        gateways[name] = (f"http://127.0.0.1:{port}", proc)
    for url, _ in gateways.values():
        wait_http(f"{url}/healthz", timeout=30)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        reports = []
        for url, _ in gateways.values():
            request = urllib.request.Request(f"{url}/fleet", headers={"Authorization": f"Bearer {OPEN}"})
            reports.append(json.load(urllib.request.urlopen(request, timeout=5)))
        healthy = all(all(n["healthy"] for n in r["neurons"]) for r in reports)
        leaders = {r["cluster"]["leader"] for r in reports}
        if (
            healthy
            and len(leaders) == 1
            and "" not in leaders
            and all(len(r["cluster"]["gateways"]) == 3 for r in reports)
        ):
            return gateways, neurons
        time.sleep(0.2)
    pytest.fail(
        "the three gateways never agreed on a leader with both neurons up:\n"
        + "\n".join(helexa_process.output(proc)[-2000:] for _, proc in gateways.values())
    )


async def test_three_gateways_two_neurons_one_store(ha_fleet, helexa_process, redis_server):
    gateways, neurons = ha_fleet
    urls = {name: url for name, (url, _) in gateways.items()}
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        leader = (await fleet_report(session, urls["gw0"]))["cluster"]["leader"]
        followers = [n for n in urls if n != leader]

        # 1. a burst through all three gateways: each model is loaded once, every request served
        burst = [ask(session, url, model) for url in urls.values() for model in (SMOL, GEMMA) for _ in range(2)]
        assert await asyncio.gather(*burst) == [200] * 12
        assert (loads(neurons, SMOL), loads(neurons, GEMMA)) == (1, 1)

        # 2. a key limited to 4 requests a minute gets 4 across the three gateways
        statuses = [await ask(session, urls[f"gw{i % 3}"], SMOL, CAPPED) for i in range(9)]
        assert sorted(statuses) == [200] * 4 + [429] * 5, statuses

        # 3. the leader SIGKILLed in the middle of cold loads
        for model in (SMOL, GEMMA):
            async with session.post(
                f"{urls[followers[0]]}/admin/models/{model}/unload", headers={"Authorization": f"Bearer {ADMIN}"}
            ) as resp:
                assert resp.status == 200, await resp.text()
        before = {m: loads(neurons, m) for m in (SMOL, GEMMA)}
        on_followers = [asyncio.create_task(ask(session, urls[f], model)) for f in followers for model in (SMOL, GEMMA)]
        on_leader = [asyncio.create_task(ask(session, urls[leader], model)) for model in (SMOL, GEMMA)]
        await until_loading(session, neurons)  # a load reached a neuron: the leader placed it
        killed_at = time.monotonic()
        gateways[leader][1].send_signal(signal.SIGKILL)
        new_leader = ""
        while not new_leader:
            assert time.monotonic() - killed_at < 5, "no new leader within 5 s"
            report = (await fleet_report(session, urls[followers[0]]))["cluster"]
            if report["leader"] in followers:
                new_leader = report["leader"]
            else:
                await asyncio.sleep(0.1)
        assert await asyncio.gather(*on_followers) == [200] * 4  # nothing lost that was sent to a live gateway
        assert all(status in (0, 200) for status in await asyncio.gather(*on_leader))
        assert {m: loads(neurons, m) - before[m] for m in (SMOL, GEMMA)} == {SMOL: 1, GEMMA: 1}  # none twice

        # 4. the store stopped: loaded models keep answering, a cold load is a 503 at once
        async with session.post(
            f"{urls[new_leader]}/admin/models/{GEMMA}/unload", headers={"Authorization": f"Bearer {ADMIN}"}
        ) as resp:
            assert resp.status == 200
        await until_everyone_sees(session, [urls[f] for f in followers], GEMMA, "unloaded")
        redis_server.stop()
        began = time.monotonic()
        while any([(await fleet_report(session, urls[f]))["cluster"]["store_up"] for f in followers]):
            assert time.monotonic() - began < 10, "the gateways never noticed the store was gone"
            await asyncio.sleep(0.2)
        for f in followers:
            assert await ask(session, urls[f], SMOL) == 200
        body = {"model": GEMMA, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
        async with session.post(
            f"{urls[followers[1]]}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {OPEN}"}
        ) as resp:
            error = (await resp.json())["error"]
            assert resp.status == 503 and error["code"] == "store_unavailable", error

        # 5. the store back: the gateways find it again by themselves, a leader places the cold load
        redis_server.start()
        deadline = time.monotonic() + 30
        while True:
            status = await ask(session, urls[followers[1]], GEMMA)
            if status == 200:
                break
            assert status == 503 and time.monotonic() < deadline, status
            await asyncio.sleep(0.5)
        assert loads(neurons, GEMMA) - before[GEMMA] == 2  # the one load after the store came back
    log = helexa_process.output(gateways[new_leader][1])
    assert re.search(r"leads the cluster now", log), log[-2000:]


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


async def until_loading(session: aiohttp.ClientSession, neurons: dict[str, str]) -> None:
    """Until some neuron reports a model loading (or loaded)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for name, url in neurons.items():
            async with session.get(f"{url}/models", headers={"Authorization": f"Bearer token-{name}"}) as resp:
                states = {m["id"]: m["status"] for m in (await resp.json())["models"]}
            if any(s in ("loading", "loaded") for s in states.values()):
                return
        await asyncio.sleep(0.05)
    pytest.fail("no neuron began a load")
