"""The sleep tier through the neuron API, with the vLLM harness driving a fake engine with sleep endpoints
on a (simulated) GPU: unload sleeps, load wakes the same process, full unloads and memory pressure stop it."""

from __future__ import annotations

import sys

import aiohttp
import pytest

from helexa.neuron.models import ModelManager
from helexa.neuron.state import manager_key
from helexa.wire.neuron import DeviceHealth, DeviceInfo, Discovery
from helexa_vllm import Vllm
from tests.fakes.fake_harness import FAKE_ENGINE


@pytest.fixture
def gpu_neuron(neuron, models_dir, monkeypatch):
    (models_dir / "ckpt").mkdir()
    (models_dir / "ckpt" / "model.safetensors").write_bytes(b"x" * 4096)
    free = {"mb": lambda: 20000}

    def fake_health(count):
        mb = free["mb"]()
        return [DeviceHealth(index=0, vram_used_mb=24000 - mb, vram_free_mb=mb)]

    monkeypatch.setattr("helexa.neuron.models.read_health", fake_health)

    async def make(*command_extra: str):
        # commands come only from the neuron's own configuration, never from a load request
        command = [sys.executable, str(FAKE_ENGINE), "--sleep-endpoints", *command_extra]
        options = {"command": command, "sleep_mode": True}
        models = [{"id": m, "harness": "vllm", "source": "ckpt", "options": options} for m in ("m", "a", "b")]
        client = await neuron(harnesses={"vllm": Vllm}, models=models)
        client.app[manager_key].discovery = Discovery(
            hostname="gpu", devices=[DeviceInfo(index=0, name="GPU", vram_total_mb=24000)]
        )
        return client, free

    return make


def body(model_id="m", vram_mb=8000, **extra):
    return {"model_id": model_id, "harness": "vllm", "source": "ckpt", "vram_mb": vram_mb, **extra}


async def engine_stats(manager: ModelManager, model_id: str) -> dict:
    base = manager.harnesses["vllm"].base_url(model_id)
    secret = manager.credentials.headers(base)  # the engine answers only its neuron
    async with aiohttp.ClientSession() as session, session.get(base + "/stats", headers=secret) as resp:
        return await resp.json()


async def test_unload_sleeps_and_load_wakes_the_same_engine(gpu_neuron):
    client, _ = await gpu_neuron()
    manager = client.app[manager_key]
    assert (await client.post("/models/load", json=body())).status == 200
    pid = manager.harnesses["vllm"].pid("m")
    resp = await client.post("/models/unload", json={"model_id": "m"})
    assert (await resp.json())["status"] == "sleeping"
    models = (await (await client.get("/models")).json())["models"]
    assert models[0]["status"] == "sleeping" and models[0]["vram_used_mb"] == 0
    assert (await client.post("/v1/chat/completions", json={"model": "m", "messages": []})).status in (200, 404)
    resp = await client.post("/models/load", json=body())
    assert (await resp.json())["status"] == "loaded"
    assert manager.harnesses["vllm"].pid("m") == pid
    stats = await engine_stats(manager, "m")
    assert stats["sleeps"] == 1 and stats["wakes"] >= 1
    resp = await client.post("/models/unload", json={"model_id": "m", "stop": True})
    assert (await resp.json())["status"] == "unloaded"
    assert manager.harnesses["vllm"].pid("m") is None


@pytest.mark.parametrize("flag", ["stop", "full"])  # "full": the 0.1.0 name, which older gateways send
async def test_a_stop_unload_never_sleeps(gpu_neuron, flag):
    client, _ = await gpu_neuron()
    manager = client.app[manager_key]
    assert (await client.post("/models/load", json=body())).status == 200
    resp = await client.post("/models/unload", json={"model_id": "m", flag: True})
    assert (await resp.json())["status"] == "unloaded"
    assert manager.harnesses["vllm"].pid("m") is None


async def test_memory_pressure_stops_sleeping_engines_for_real(gpu_neuron):
    client, free = await gpu_neuron()
    manager = client.app[manager_key]
    assert (await client.post("/models/load", json=body("a", 8000))).status == 200
    assert (await (await client.post("/models/unload", json={"model_id": "a"})).json())["status"] == "sleeping"
    harness = manager.harnesses["vllm"]
    free["mb"] = lambda: 4000 if harness.pid("a") else 24000  # a's process still holds memory while it sleeps
    resp = await client.post("/models/load", json=body("b", 12000))
    assert resp.status == 200, await resp.text()
    records = manager.records
    assert records["a"].status == "unloaded" and manager.harnesses["vllm"].pid("a") is None
    assert records["b"].status == "loaded"


async def test_a_recognised_start_failure_leads_last_error(gpu_neuron):
    client, _ = await gpu_neuron("--say", "OSError: [Errno 98] Address already in use", "--exit-at-start", "1")
    resp = await client.post("/models/load", json=body())
    assert resp.status == 502
    assert (await resp.json())["error"]["message"].startswith("model 'm' failed to load: port already in use")
    models = (await (await client.get("/models")).json())["models"]
    assert models[0]["status"] == "failed" and models[0]["last_error"].startswith("port already in use")


async def test_bench_swap_on_a_sleep_tier_measures_a_wake(gpu_neuron, tmp_path):
    from helexa.bench.runner import Plan, run_once
    from helexa.bench.store import Store

    client, _ = await gpu_neuron()
    assert (await client.post("/models/load", json=body())).status == 200
    store = Store(tmp_path / "bench.sqlite")
    plan = Plan(models=["m"], scenarios=["swap"], repeat=1, quick=True)
    said: list[str] = []
    measured = await run_once(str(client.make_url("")).rstrip("/"), store, plan, say=said.append)
    (row,) = store.rows()
    assert measured == 1 and row["ok"], said
    assert row["detail"] == "wake from sleep" and row["swap_seconds"] > 0, row
