"""``[gateway] workers = 2``: two gateway processes on one port (SO_REUSEPORT), sharing limits through the store;
a worker that dies is started again; SIGTERM stops them all."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.error
import urllib.request

import pytest
import tomli_w

from tests.conftest import alive, descendants, free_port, until, wait_http
from tests.fakes.fake_neuron import FakeNeuron

pytestmark = pytest.mark.timeout(120)


def fetch(url: str, key: str = "sk-w") -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    return json.load(urllib.request.urlopen(request, timeout=5))


def chat(url: str, key: str) -> int:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = urllib.request.Request(
        f"{url}/v1/chat/completions",
        data=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_two_workers_share_a_port_and_the_limits(aiohttp_server, tmp_path, helexa_process, redis_server):
    neuron = FakeNeuron("a")
    neuron.preload("m")
    server = await aiohttp_server(neuron.app())
    port, metrics = free_port(), free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        tomli_w.dumps(
            {
                "gateway": {"listen": f"127.0.0.1:{port}", "metrics_listen": f"127.0.0.1:{metrics}", "workers": 2},
                "cluster": {"store": redis_server.url, "lease_seconds": 2.0},
                "auth": {
                    "keys": [{"name": "w", "key": "sk-w"}, {"name": "capped", "key": "sk-c", "requests_per_minute": 6}]
                },
                "neurons": [{"name": "a", "endpoint": str(server.make_url("")).rstrip("/")}],
            }
        )
    )
    parent = helexa_process("run", "--role", "gateway", "--config", str(config))
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz", timeout=30)

    def gateways_seen(index: int) -> str:  # worker ``index``'s metrics are on the metrics port + index
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics + index}/metrics", timeout=5).read().decode()
        except OSError as exc:  # not listening yet
            return str(exc)
        return next(line for line in text.splitlines() if line.startswith("helexa_gateway_cluster_gateways "))

    # (blocking calls in threads: the fake neuron answers from this test's event loop)
    deadline = time.monotonic() + 30
    while {await asyncio.to_thread(gateways_seen, i) for i in (0, 1)} != {"helexa_gateway_cluster_gateways 2.0"}:
        assert time.monotonic() < deadline, helexa_process.output(parent)[-2000:]  # both beat into the store
        await asyncio.sleep(0.2)
    workers = sorted(descendants(parent.pid))
    assert len(workers) == 2, helexa_process.output(parent)[-2000:]
    assert len((await asyncio.to_thread(fetch, f"{url}/fleet"))["cluster"]["gateways"]) == 2

    # the kernel spreads them over both workers
    statuses = [await asyncio.to_thread(chat, url, "sk-c") for _ in range(10)]
    assert statuses.count(200) == 6 and statuses.count(429) == 4, statuses

    os.kill(workers[0], signal.SIGKILL)  # a worker dies: the parent starts another
    await until(lambda: not alive(workers[0]) and len(descendants(parent.pid)) == 2, 20, "a new worker")
    again = sorted(descendants(parent.pid))
    assert len(again) == 2 and workers[0] not in again, helexa_process.output(parent)[-2000:]
    await asyncio.to_thread(wait_http, f"{url}/healthz", 30)

    parent.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(parent.wait, 30) == 0
    assert not any(alive(pid) for pid in again)


async def test_no_worker_outlives_a_killed_parent(tmp_path, helexa_process, redis_server):
    port, metrics = free_port(), free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        tomli_w.dumps(
            {
                "gateway": {"listen": f"127.0.0.1:{port}", "metrics_listen": f"127.0.0.1:{metrics}", "workers": 2},
                "cluster": {"store": redis_server.url},
            }
        )
    )
    parent = helexa_process("run", "--role", "gateway", "--config", str(config))
    await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/healthz", 30)
    await until(lambda: len(descendants(parent.pid)) == 2, 10, "two workers")
    workers = descendants(parent.pid)
    parent.kill()  # SIGKILL: nothing of its own runs; the kernel tells the workers
    await asyncio.to_thread(parent.wait, 10)
    await until(lambda: not any(alive(pid) for pid in workers), 20, "the workers ended")
