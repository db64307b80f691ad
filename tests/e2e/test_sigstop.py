"""Real processes: a neuron frozen with SIGSTOP (connections accepted, nothing answered) does not hang clients.

Two ``helexa run --role neuron`` processes serve one model each from a scripted engine; the gateway in front of
them polls every 0.3 s with a 1 s neuron timeout. One neuron gets SIGSTOP: requests fail over to the other,
each answered within poll_interval + neuron_timeout + 1 s; when both are frozen, a request gets an error within
the same bound instead of waiting for them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import aiohttp
import pytest

from helexa.gateway.app import make_gateway_app
from helexa.gateway.state import lifecycle_key
from tests.conftest import ROOT, free_port, make_config, wait_http

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
BOUND_S = 0.3 + 1.0 + 1.0


@pytest.fixture
def two_neurons(helexa_process, tmp_path):
    """``[(name, process, port, token)]`` of two neurons, each with model "m" on its own scripted engine."""
    engines, neurons = [], []
    for name in ("a", "b"):
        engine_port, port = free_port(), free_port()
        argv = [sys.executable, str(ROOT / "tests/fakes/fake_engine.py"), "--port", str(engine_port)]
        engines.append(subprocess.Popen([*argv, "--model", "m"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_http(f"http://127.0.0.1:{engine_port}/health")
        config = tmp_path / f"{name}.toml"
        config.write_text(
            f'[neuron]\nlisten = "127.0.0.1:{port}"\nmodel_dirs = ["{tmp_path}"]\n'
            f'preload = ["m"]\n[[models]]\nid = "m"\nharness = "external"\n'
            f'source = "http://127.0.0.1:{engine_port}/v1"\n'
        )
        proc = helexa_process("run", "--role", "neuron", "--config", str(config))
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=30)
        token = (helexa_process.state_dir / "neuron.token").read_text().strip()  # both share one state dir
        neurons.append((name, proc, port, token))
    yield neurons
    for _, proc, _, _ in neurons:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
    for engine in engines:
        engine.kill()
        engine.wait(timeout=10)


async def test_a_sigstopped_neuron_fails_over_and_never_hangs_clients(aiohttp_server, two_neurons, version):
    cfg = make_config(
        neurons=[{"name": n, "endpoint": f"http://127.0.0.1:{p}", "token": t} for n, _, p, t in two_neurons],
        gateway={"poll_interval_seconds": 0.3, "neuron_timeout_seconds": 1.0},
    )
    gateway = await aiohttp_server(make_gateway_app(cfg, version))
    url = str(gateway.make_url("/v1/chat/completions"))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        deadline = time.monotonic() + 30
        while True:  # until both neurons report the model loaded
            async with session.get(str(gateway.make_url("/v1/models"))) as resp:
                data = (await resp.json())["data"]
            if data and len(data[0]["loaded_on"]) == 2:
                break
            assert time.monotonic() < deadline, data
            await asyncio.sleep(0.2)

        async def timed() -> tuple[int, float]:
            began = time.monotonic()
            async with session.post(url, json=CHAT) as resp:
                await resp.read()
                return resp.status, time.monotonic() - began

        os.kill(two_neurons[0][1].pid, signal.SIGSTOP)
        results = await asyncio.gather(*(timed() for _ in range(6)))
        assert all(status == 200 for status, _ in results), results
        assert max(seconds for _, seconds in results) < BOUND_S, results
        os.kill(two_neurons[1][1].pid, signal.SIGSTOP)
        status, seconds = await timed()
        assert status in (404, 502, 503) and seconds < BOUND_S, (status, seconds)


async def test_a_neuron_killed_and_restarted_is_used_again(
    aiohttp_server, two_neurons, helexa_process, version, tmp_path
):
    cfg = make_config(
        neurons=[{"name": n, "endpoint": f"http://127.0.0.1:{p}", "token": t} for n, _, p, t in two_neurons],
        gateway={"poll_interval_seconds": 0.3, "neuron_timeout_seconds": 1.0},
    )
    app = make_gateway_app(cfg, version)
    gateway = await aiohttp_server(app)
    url = str(gateway.make_url("/v1/chat/completions"))
    registry = app[lifecycle_key].registry

    async def wait_for(condition, what: str) -> None:
        deadline = time.monotonic() + 30
        while not condition():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.1)

    await wait_for(lambda: len(registry.replicas("m")) == 2, "both neurons serve m")
    name, proc, _, _ = two_neurons[0]
    proc.kill()  # SIGKILL: its engine (external) keeps running; the neuron is gone
    proc.wait(timeout=10)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for _ in range(4):  # served by the other neuron meanwhile, with failover when routed to the dead one
            async with session.post(url, json=CHAT) as resp:
                assert resp.status == 200
        helexa_process("run", "--role", "neuron", "--config", str(tmp_path / f"{name}.toml"))  # same port, same token
        await wait_for(lambda: registry.neurons[name].healthy and registry.neurons[name].loaded("m"), "restarted")
        async with session.post(url, json=CHAT) as resp:
            assert resp.status == 200
    assert registry.neurons[name].discovery is not None
