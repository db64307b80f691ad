"""Gateway fixtures: several in-process fake neurons and a gateway app polling them."""

from __future__ import annotations

import asyncio
import time

import pytest

from helexa.gateway.app import make_gateway_app
from helexa.gateway.state import lifecycle_key
from tests.conftest import make_config
from tests.fakes.fake_neuron import FakeNeuron


@pytest.fixture
def fleet(aiohttp_server, aiohttp_client, version, tmp_path):
    """``await fleet([FakeNeuron(...), ...], models=[...], **sections)`` -> (gateway client, {name: fake}). Its
    batches (files, SQLite) live under the test's directory unless ``batches`` says otherwise."""

    async def make(fakes: list[FakeNeuron], *, models: list | None = None, **sections):
        neurons = []
        for fake in fakes:
            server = await aiohttp_server(fake.app())
            fake.server = server
            neurons.append(
                {"name": fake.name, "endpoint": str(server.make_url("")).rstrip("/"), "token": f"tok-{fake.name}"}
            )
        gateway = {"poll_interval_seconds": 0.05, **sections.pop("gateway", {})}
        sections["batches"] = {"directory": str(tmp_path / "batches"), **sections.get("batches", {})}
        cfg = make_config(neurons=neurons, models=models or [], gateway=gateway, **sections)
        client = await aiohttp_client(make_gateway_app(cfg, version))
        await wait_healthy(client, len(fakes))
        return client, {f.name: f for f in fakes}

    return make


async def wait_healthy(client, count: int, timeout: float = 5.0) -> None:
    registry = client.app[lifecycle_key].registry
    deadline = time.monotonic() + timeout
    while sum(n.healthy for n in registry.neurons.values()) < count:
        assert time.monotonic() < deadline, "neurons never became healthy"
        await asyncio.sleep(0.02)


def entry(model_id: str, vram_mb: int = 8000, **kw) -> dict:
    return {"id": model_id, "harness": "vllm", "vram_mb": vram_mb, **kw}
