"""A gateway's view of the fleet is a poll old (a follower's, the leader's last change old): a request routed to a
neuron that no longer holds the model is not answered 404 — another replica serves it, or the model is routed
again (loaded where the placer says). Only a model nobody holds, and nobody can load, is a 404."""

from __future__ import annotations

import aiohttp
import pytest

from helexa.gateway.app import make_gateway_app
from helexa.gateway.state import lifecycle_key
from helexa.neuron.app import make_neuron_app
from tests.conftest import engine_ports, make_config, metric_total
from tests.fakes.fake_harness import FakeHarness
from tests.fakes.fake_neuron import FakeNeuron
from tests.gateway.conftest import entry

SLOW_POLLS = {"poll_interval_seconds": 600}  # the view stays as it was after the first poll
CHAT = [{"role": "user", "content": "hi"}]


def gone_count(client) -> float:
    return metric_total(client.app, "helexa_gateway_upstream_errors_total", 'code="model_gone"')


async def test_another_replica_serves_what_a_neuron_lost(fleet):
    a, b = FakeNeuron("a"), FakeNeuron("b")
    a.preload("chat")
    b.preload("chat")
    client, _ = await fleet([a, b], models=[entry("chat", 600)], gateway=SLOW_POLLS)
    a.models.pop("chat")  # unloaded behind the gateway's back
    for _ in range(4):
        resp = await client.post("/v1/chat/completions", json={"model": "chat", "messages": CHAT})
        assert resp.status == 200, await resp.text()
    assert b.served == ["chat"] * 4 and a.served == []
    registry = client.app[lifecycle_key].registry
    assert [n.name for n in registry.replicas("chat")] == ["b"]  # a is off the view: asked once, not four times
    assert gone_count(client) == 1


async def test_the_only_replica_lost_it_the_model_is_loaded_again(fleet):
    a = FakeNeuron("a")
    a.preload("chat")
    client, _ = await fleet([a], models=[entry("chat", 600)], gateway=SLOW_POLLS)
    a.models.pop("chat")
    resp = await client.post("/v1/chat/completions", json={"model": "chat", "messages": CHAT, "stream": True})
    assert resp.status == 200 and "data: [DONE]" in await resp.text()
    assert a.loads == ["chat"] and a.served == ["chat"]


async def test_a_model_nobody_can_load_is_still_a_404(fleet):
    a = FakeNeuron("a")
    a.preload("adhoc")  # loaded by hand, not in the catalogue
    client, _ = await fleet([a], models=[entry("chat", 600)], gateway=SLOW_POLLS)
    a.models.pop("adhoc")
    resp = await client.post("/v1/chat/completions", json={"model": "adhoc", "messages": CHAT})
    answer = await resp.json()
    assert resp.status == 404 and answer["error"]["code"] == "model_not_found", answer
    assert (await client.get("/v1/models")).status == 200  # and it serves on


@pytest.fixture(params=[False, True], ids=["no-load-on-demand", "load-on-demand"])
async def real_neuron(request, aiohttp_server, tmp_path, version):
    """A real neuron (fake engine processes), loading on demand or not, behind a gateway that polls rarely."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "fake-Q4_K_M.gguf").write_bytes(b"GGUF")
    catalogue = [{"id": "agent", "harness": "fake", "source": "fake-Q4_K_M.gguf"}]
    neuron_cfg = make_config(
        neuron={
            "model_dirs": [str(models)],
            "port_range": engine_ports(),
            "token": "nt",
            "load_on_demand": request.param,
        },
        models=catalogue,
    )
    neuron = await aiohttp_server(make_neuron_app(neuron_cfg, version, {"fake": FakeHarness}))
    gateway_cfg = make_config(
        neurons=[{"name": "n1", "endpoint": str(neuron.make_url("")).rstrip("/"), "token": "nt"}],
        models=[{"id": "agent", "harness": "fake", "source": "fake-Q4_K_M.gguf"}],
        gateway=SLOW_POLLS,
    )
    gateway_app = make_gateway_app(gateway_cfg, version)
    gateway = await aiohttp_server(gateway_app)
    return str(gateway.make_url("")).rstrip("/"), str(neuron.make_url("")).rstrip("/"), gateway_app, request.param


def cold_starts(app) -> float:
    return metric_total(app, "helexa_gateway_cold_starts_total")


async def test_a_real_neurons_answer_is_recognised(real_neuron):
    """Whether the neuron loads on demand or not, a request through the gateway is placed by the gateway: the
    neuron's own load on demand serves only those sent to it directly."""
    gateway, neuron, gateway_app, on_demand = real_neuron
    body = {"model": "agent", "messages": CHAT, "max_tokens": 4}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gateway}/v1/chat/completions", json=body) as resp:
            assert resp.status == 200, await resp.text()  # a cold load through the gateway
        # the model is unloaded on the neuron itself: the gateway's view is stale until its next poll
        unload = {"model_id": "agent", "stop": True}
        async with http.post(f"{neuron}/models/unload", json=unload, headers={"Authorization": "Bearer nt"}) as r:
            assert r.status == 200, await r.text()
        as_gateway = {"Authorization": "Bearer nt", "x-helexa-placer": "gateway"}
        async with http.post(f"{neuron}/v1/chat/completions", json=body, headers=as_gateway) as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "model_not_found"  # what it says
        assert cold_starts(gateway_app) == 1
        async with http.post(f"{gateway}/v1/chat/completions", json=body) as resp:
            answer = await resp.json()
            assert resp.status == 200 and answer["choices"][0]["message"]["content"], answer
        assert cold_starts(gateway_app) == 2  # loaded again by the gateway's placer, not behind its back
        if on_demand:  # a client of the neuron itself still gets its load on demand
            async with http.post(f"{neuron}/models/unload", json=unload, headers={"Authorization": "Bearer nt"}):
                pass
            async with http.post(
                f"{neuron}/v1/chat/completions", json=body, headers={"Authorization": "Bearer nt"}
            ) as r:
                assert r.status == 200, await r.text()
