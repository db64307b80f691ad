"""Gangs end to end, fast: a gateway and two real neuron apps whose vLLM harness runs the fake engine as each
rank (the head serving, the follower ``--headless``) — the real load protocol, argv, supervision and failure
handling; tests/vllm/test_vllm_gang.py does the same with vLLM's own multi-node runtime."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import openai
import pytest
from prometheus_client import generate_latest

from helexa.bench.runner import Plan, run_once
from helexa.bench.store import Store
from helexa.cli.status import status_table
from helexa.gateway.app import make_gateway_app
from helexa.gateway.state import lifecycle_key
from helexa.neuron.app import make_neuron_app
from helexa.neuron.state import manager_key
from helexa.server.app import registry_key
from helexa.wire.neuron import DeviceHealth, DeviceInfo, Discovery
from helexa_vllm import Vllm
from tests.conftest import alive, engine_ports, make_config, until
from tests.fakes.fake_harness import FAKE_ENGINE
from tests.gateway.conftest import wait_healthy

MODEL = "big"


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


@pytest.fixture
def gang_fleet(aiohttp_server, aiohttp_client, tmp_path, version, monkeypatch):
    """``await gang_fleet(**overrides)`` -> (gateway client, {name: neuron server})."""
    models = tmp_path / "models"
    (models / "ckpt").mkdir(parents=True)
    (models / "ckpt" / "model.safetensors").write_bytes(b"x" * 4096)
    (models / "ckpt" / "config.json").write_text('{"num_attention_heads": 4}')

    async def make(*, neuron_b: dict | None = None, gpu: bool = False, extra: tuple[str, ...] = ()):
        command = [sys.executable, str(FAKE_ENGINE), "--sleep-endpoints", *extra]
        options = {"command": command, "sleep_mode": True}
        entry = {"id": MODEL, "harness": "vllm", "source": "ckpt", "hosts": 2, "vram_mb": 4000, "options": options}
        small = {"id": "small", "harness": "vllm", "source": "ckpt", "vram_mb": 1000, "options": options}
        catalogue = [entry, small]
        if gpu:  # a simulated GPU, so vLLM's sleep mode applies
            monkeypatch.setattr(
                "helexa.neuron.models.read_health",
                lambda count: [DeviceHealth(index=0, vram_used_mb=0, vram_free_mb=24000)],
            )
        servers = {}
        for name, more in (("a", {}), ("b", neuron_b or {})):
            section = {
                "model_dirs": [str(models)],
                "port_range": engine_ports(),
                "rank_port_range": engine_ports(),
                "ready_timeout_seconds": 20,
                "stop_timeout_seconds": 2,
                "demo": False,
                "multi_host": True,
                "advertise_address": "127.0.0.1",
                "gang_peers": ["127.0.0.1"],
                "allow_unauthenticated": True,
                "state_dir": str(tmp_path / name),
                **more,
            }
            app = make_neuron_app(make_config(neuron=section, models=catalogue), version, {"vllm": Vllm})
            servers[name] = await aiohttp_server(app)
            if gpu:
                app[manager_key].discovery = Discovery(
                    hostname=name, devices=[DeviceInfo(index=0, name="GPU", vram_total_mb=24000)]
                )
        neurons = [{"name": n, "endpoint": str(s.make_url("")).rstrip("/")} for n, s in servers.items()]
        cfg = make_config(
            neurons=neurons,
            models=[  # options: the neurons' own
                {"id": MODEL, "harness": "vllm", "hosts": 2, "vram_mb": 4000},
                {"id": "small", "harness": "vllm", "vram_mb": 1000},
            ],
            gateway={"poll_interval_seconds": 0.1, "neuron_timeout_seconds": 1},
        )
        client = await aiohttp_client(make_gateway_app(cfg, version))
        await wait_healthy(client, 2)
        return client, servers

    return make


def harness(server) -> Vllm:
    return server.app[manager_key].harnesses["vllm"]


async def warm(client) -> tuple[openai.AsyncOpenAI, str, str]:
    """A first request loads the gang: ``(the SDK client, the head's neuron, the follower's)``."""
    sdk = chat(client)
    await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    head = client.app[lifecycle_key].registry.replicas(MODEL)[0].name
    return sdk, head, "b" if head == "a" else "a"


def chat(client) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)


async def test_a_request_loads_the_gang_and_the_head_serves_it(gang_fleet):
    client, servers = await gang_fleet()
    sdk = chat(client)
    reply = await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content
    stream = await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    ranks = {}
    for name, server in servers.items():
        info = next(m for m in (await (await client.session.get(server.make_url("/models"))).json())["models"])
        assert info["status"] == "loaded", info
        ranks[info["rank"]["rank"]] = (name, info["rank"])
    assert set(ranks) == {0, 1}
    head_name, head = ranks[0]
    follower_name, follower = ranks[1]
    assert head["gang"] == follower["gang"] and head["master_port"] == follower["master_port"] > 0
    assert follower["master_addr"] == "127.0.0.1" and follower["versions"] == head["versions"]
    head_argv = cmdline(harness(servers[head_name]).pid(MODEL))
    follower_argv = cmdline(harness(servers[follower_name]).pid(MODEL))
    for argv, rank in ((head_argv, "0"), (follower_argv, "1")):
        assert argv[argv.index("--node-rank") + 1] == rank
        assert argv[argv.index("--nnodes") + 1] == "2" and argv[argv.index("--pipeline-parallel-size") + 1] == "2"
        assert argv[argv.index("--master-port") + 1] == str(head["master_port"])
        assert "serve" in argv and argv[argv.index("--distributed-executor-backend") + 1] == "mp"
    assert "--headless" in follower_argv and "--headless" not in head_argv

    fleet = await (await client.get("/fleet")).json()
    card = next(m for m in fleet["models"] if m["id"] == MODEL)
    assert card["status"] == "loaded" and card["loaded_on"] == [head_name]
    assert [(m["neuron"], m["rank"]) for m in card["members"]] == [(head_name, 0), (follower_name, 1)]
    assert all(m["memory_mb"] == 2000 for m in card["members"])
    table = status_table(fleet)
    assert re.search(rf"rank 0 \(head\)\s+loaded\s+{head_name}\s+2.0 GiB", table), table
    assert re.search(rf"rank 1 \(follower\)\s+loaded\s+{follower_name}\s+2.0 GiB", table), table
    logs = await (await client.get(f"/admin/models/{MODEL}/logs", params={"rank": "1"})).text()
    assert logs.startswith(f"# neuron {follower_name}") and "headless rank" in logs
    assert (await client.get(f"/admin/models/{MODEL}/logs", params={"rank": "7"})).status == 404
    assert (await client.get(f"/admin/models/{MODEL}/logs", params={"rank": "x"})).status == 400
    page = await (await client.get("/ui")).text()
    assert f"rank 0 on {head_name}: loaded, 2000 MiB" in page and f"rank 1 on {follower_name}: loaded" in page
    scrape = generate_latest(client.app[registry_key]).decode()
    for name, rank in ((head_name, 0), (follower_name, 1)):
        assert f'neuron="{name}",rank="{rank}",status="loaded"}} 2000.0' in scrape, scrape

    # the follower serves no API: a request sent to it is refused with the reason
    resp = await client.session.post(
        servers[follower_name].make_url("/v1/chat/completions"),
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "gang_follower"

    resp = await client.post(f"/admin/models/{MODEL}/unload")
    assert resp.status == 200
    for server in servers.values():
        assert harness(server).pid(MODEL) is None
    await sdk.close()


@pytest.mark.parametrize("kill", ["follower", "head"])
async def test_a_dead_member_fails_the_whole_gang_and_the_next_request_loads_it_again(gang_fleet, kill):
    client, servers = await gang_fleet()
    sdk, head, follower = await warm(client)
    lifecycle = client.app[lifecycle_key]
    victim, survivor = (follower, head) if kill == "follower" else (head, follower)
    pids = {n: harness(s).pid(MODEL) for n, s in servers.items()}
    os.kill(pids[victim], signal.SIGKILL)
    took = await until(lambda: not alive(pids[survivor]), 15, "the surviving member stopped")
    assert took < 15
    assert not lifecycle.registry.replicas(MODEL)
    failures = [s for s in lifecycle.metrics.gang_failures.collect()[0].samples if s.name.endswith("_total")]
    assert [(s.labels["neuron"], s.value) for s in failures] == [(victim, 1.0)]

    reply = await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "again"}])
    assert reply.choices[0].message.content
    assert all(harness(s).pid(MODEL) not in (None, pids[n]) for n, s in servers.items())
    await sdk.close()


async def test_a_follower_neuron_that_disappears_fails_the_gang(gang_fleet):
    client, servers = await gang_fleet()
    sdk, head, follower = await warm(client)
    head_pid = harness(servers[head]).pid(MODEL)
    await servers[follower].close()  # power loss, as the gateway sees it: the neuron stops answering
    await until(lambda: not alive(head_pid), 15, "the head stopped")
    with pytest.raises(openai.APIStatusError) as refused:
        await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 503
    assert "of the healthy neurons 1 join gangs" in refused.value.body["message"], refused.value.body
    await sdk.close()


OTHER_VERSIONS = {"vllm": "vllm 0.0.1", "torch": "2.0"}


@pytest.mark.parametrize(
    ("neuron_b", "versions_b", "status", "kind", "says"),
    [
        ({"multi_host": False, "advertise_address": ""}, None, 503, "no_placement", "1 join gangs"),
        (
            {"gang_peers": ["10.0.0.9"]},
            None,
            422,
            "peer_not_allowed",
            "127.0.0.1 is not among this neuron's gang_peers",
        ),
        ({}, OTHER_VERSIONS, 422, "version_mismatch", "(rank 1) refused: torch here is '2.0'"),
    ],
)
async def test_a_member_that_refuses_leaves_nothing_loaded(gang_fleet, neuron_b, versions_b, status, kind, says):
    client, servers = await gang_fleet(neuron_b=neuron_b)
    if versions_b is not None:
        harness(servers["a"]).versions = lambda: {"vllm": "vllm 0.32.0", "torch": "2.13.0"}  # type: ignore[method-assign]
        harness(servers["b"]).versions = lambda: versions_b  # type: ignore[method-assign]
    sdk = chat(client)
    with pytest.raises(openai.APIStatusError) as refused:
        await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    error = refused.value.body  # the SDK's body is the error object
    assert refused.value.status_code == status and kind in (error.get("code"), error.get("kind")), error
    assert says in error["message"], error
    for server in servers.values():
        assert harness(server).pid(MODEL) is None
        models = (await (await client.session.get(server.make_url("/models"))).json())["models"]
        assert all(m["status"] in ("unloaded", "failed") for m in models), models
    await sdk.close()


async def test_unload_puts_the_gang_to_sleep_through_its_head_and_a_load_wakes_it(gang_fleet):
    client, servers = await gang_fleet(gpu=True)
    sdk = chat(client)
    await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    lifecycle = client.app[lifecycle_key]
    head = lifecycle.registry.replicas(MODEL)[0].name
    pids = {n: harness(s).pid(MODEL) for n, s in servers.items()}
    assert (await client.post(f"/admin/models/{MODEL}/unload")).status == 200
    for name, server in servers.items():
        info = next(m for m in server.app[manager_key].records.values())
        assert info.status == "sleeping", (name, info.status)
    base = harness(servers[head]).base_url(MODEL)
    secret = servers[head].app[manager_key].credentials.headers(base)  # the engine answers only its neuron
    stats = await (await client.session.get(base + "/stats", headers=secret)).json()
    assert stats["sleeps"] == 1
    polled = {n: s.polls for n, s in lifecycle.registry.neurons.items()}
    await until(  # three more polls of each neuron: a sleeping gang is not a broken one
        lambda: all(s.polls >= polled[n] + 3 for n, s in lifecycle.registry.neurons.items()), 5, "three polls"
    )
    assert all(harness(s).pid(MODEL) == pids[n] for n, s in servers.items())

    reply = await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "awake?"}])
    assert reply.choices[0].message.content
    assert all(harness(s).pid(MODEL) == pids[n] for n, s in servers.items())  # woken, not restarted
    stats = await (await client.session.get(base + "/stats", headers=secret)).json()
    assert stats["wakes"] == 1
    await sdk.close()


async def test_a_neuron_alone_refuses_a_model_that_needs_a_gang(gang_fleet):
    client, servers = await gang_fleet()
    resp = await client.session.post(servers["a"].make_url("/models/load"), json={"model_id": MODEL})
    body = await resp.json()
    assert resp.status == 422 and body["error"]["kind"] == "needs_gang", body


async def test_a_stream_in_flight_ends_with_an_error_when_a_member_dies(gang_fleet):
    client, servers = await gang_fleet(extra=("--chunk-size", "1", "--chunk-delay", "0.5"))
    sdk = chat(client)
    await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "warm"}])
    lifecycle = client.app[lifecycle_key]
    follower = next(m for m in lifecycle.registry.gangs(MODEL)[0].members if m.rank.rank == 1).neuron.name
    stream = await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True)
    began = time.monotonic()
    received = []
    with pytest.raises(openai.APIError) as ended:
        async for chunk in stream:
            received.append(chunk)
            if len(received) == 2:
                os.kill(harness(servers[follower]).pid(MODEL), signal.SIGKILL)
    assert time.monotonic() - began < 8  # the reply would take 14 s; the gang's failure ends it sooner
    assert len(received) < 12, len(received)
    print(ended.value)
    await sdk.close()


async def test_bench_records_a_gangs_cold_load_beside_a_single_host_one(gang_fleet, tmp_path):
    client, _ = await gang_fleet()
    store = Store(tmp_path / "bench.sqlite")
    said: list[str] = []
    plan = Plan(models=[MODEL, "small"], scenarios=["swap"], repeat=1, quick=True)
    assert await run_once(str(client.make_url("")), store, plan, say=said.append) == 2
    rows = {r["model"]: r for r in store.rows()}
    assert rows[MODEL]["ok"] and rows["small"]["ok"], rows
    assert "cold load of a gang over 2 neurons (rank 0 on " in rows[MODEL]["detail"], rows[MODEL]
    assert rows["small"]["detail"] == "cold load"
    assert rows[MODEL]["swap_seconds"] > 0 and rows["small"]["swap_seconds"] > 0
    print("\n".join(said))
