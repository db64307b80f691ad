"""Several gateways on one store, in process, in front of fake neurons: one leader places every load, limits hold
across gateways, a follower's waiting requests are served by the leader's load, the store going away costs cold
loads only, the page's sign-ins are shared."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import generate_latest

from helexa.gateway.app import make_gateway_app
from helexa.gateway.state import peers_key
from helexa.server.app import registry_key
from tests.conftest import free_port, make_config, until
from tests.fakes.fake_neuron import FakeNeuron
from tests.gateway.conftest import entry, wait_healthy
from tests.gateway.test_gateway import metric

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def leader_of(clients):
    return next(c for c in clients if c.app[peers_key].leading)


async def chat(client, model: str, **extra):
    return await client.post("/v1/chat/completions", json={"model": model, **CHAT}, headers=extra.pop("headers", {}))


async def test_a_burst_through_every_gateway_loads_the_model_once(cluster):
    a, b = FakeNeuron("a", load_delay=0.5), FakeNeuron("b", load_delay=0.5)
    clients, _ = await cluster([a, b], models=[entry("m", 8000)])
    answers = await asyncio.gather(*(chat(c, "m") for c in clients for _ in range(4)))
    assert [r.status for r in answers] == [200] * 12, [await r.text() for r in answers]
    assert sorted(a.loads + b.loads) == ["m"]  # one load, placed by the leader, serving all three gateways
    report = await (await clients[0].get("/fleet")).json()
    cluster_ = report["cluster"]
    assert cluster_["store_up"] and cluster_["gateways"] == ["gw0", "gw1", "gw2"] and cluster_["leader"]
    assert "password" not in str(cluster_)


async def test_a_follower_gets_the_leaders_verdict(cluster):
    """A model no neuron could ever hold: the leader refuses it, and a follower's request gets that refusal —
    not a wait until load_timeout."""
    a = FakeNeuron("a")
    clients, _ = await cluster([a], models=[entry("huge", 900_000)])
    follower = next(c for c in clients if not c.app[peers_key].leading)
    began = time.monotonic()
    resp = await asyncio.wait_for(chat(follower, "huge"), 10)
    body = await resp.json()
    assert resp.status == 503 and body["error"]["code"] == "no_placement", body
    assert time.monotonic() - began < 5


async def test_limits_hold_across_three_gateways(cluster):
    a = FakeNeuron("a")
    a.preload("m")
    keys = [{"name": "tight", "key": "sk-t", "requests_per_minute": 5}]
    clients, _ = await cluster([a], auth={"keys": keys})
    statuses = []
    for i in range(12):
        resp = await chat(clients[i % 3], "m", headers={"Authorization": "Bearer sk-t"})
        statuses.append(resp.status)
    assert statuses.count(200) == 5 and statuses.count(429) == 7, statuses


async def test_a_new_leader_takes_over_when_the_leader_goes(cluster):
    a = FakeNeuron("a")
    clients, _ = await cluster([a], models=[entry("m", 8000)])
    old = leader_of(clients)
    epoch = old.app[peers_key].leadership.epoch
    began = time.monotonic()
    await old.close()  # its lease is given up at shutdown; a crash is the real-process test's
    rest = [c for c in clients if c is not old]
    await until(lambda: sum(c.app[peers_key].leading for c in rest) == 1, 5, "a new leader")
    assert time.monotonic() - began < 5
    new = leader_of(rest)
    assert new.app[peers_key].leadership.epoch > epoch
    follower = next(c for c in rest if c is not new)
    assert (await chat(follower, "m")).status == 200  # a cold load through a follower: the new leader placed it
    assert a.loads == ["m"]


async def test_without_the_store_loaded_models_serve_and_cold_loads_are_a_503(cluster, redis_server):
    a = FakeNeuron("a")
    a.preload("warm")
    keys = [{"name": "tight", "key": "sk-t", "requests_per_minute": 6}]
    clients, _ = await cluster([a], models=[entry("warm", 8000), entry("cold", 8000)], auth={"keys": keys})
    auth = {"Authorization": "Bearer sk-t"}
    redis_server.stop()
    await until(lambda: not any(c.app[peers_key].up for c in clients), 5, "every gateway sees the store gone")
    assert (await chat(clients[1], "warm", headers=auth)).status == 200
    resp = await asyncio.wait_for(chat(clients[2], "cold", headers=auth), 5)
    body = await resp.json()
    assert resp.status == 503 and body["error"]["code"] == "store_unavailable", body
    assert "cluster store does not answer" in body["error"]["message"] and resp.headers["Retry-After"]
    # limits: each gateway its share (6 a minute over 3 gateways: 2 each), never 3 x 6
    served = 1
    for _ in range(4):
        served += (await chat(clients[1], "warm", headers=auth)).status == 200
    assert served == 2
    exported = generate_latest(clients[0].app[registry_key]).decode()
    assert metric(exported, "helexa_gateway_cluster_store_up") == 0
    report = await (await clients[0].get("/fleet", headers=auth)).json()
    assert report["cluster"]["store_up"] is False and report["cluster"]["store_error"]
    assert not any(c.app[peers_key].placing for c in clients)  # nobody places loads without the store

    redis_server.start()
    await until(lambda: all(c.app[peers_key].up for c in clients), 10, "the gateways see the store again")
    await until(lambda: sum(c.app[peers_key].leading for c in clients) == 1, 5, "a leader again")
    resp = await chat(clients[2], "cold", headers=auth)
    assert resp.status == 200, await resp.text()
    assert a.loads == ["cold"]


async def test_a_page_sign_in_is_known_to_every_gateway(cluster):
    a = FakeNeuron("a")
    clients, _ = await cluster([a], gateways=2, auth={"api_keys": ["sk-u"], "admin_keys": ["sk-admin"]})
    login = await clients[0].post("/ui/login", data={"key": "sk-admin"}, allow_redirects=False)
    assert login.status == 303
    cookie = login.cookies["helexa_ui"].value
    page = await clients[1].get("/ui", cookies={"helexa_ui": cookie})
    assert page.status == 200 and "sign in" not in (await page.text()).lower()
    await clients[1].post("/ui/logout", cookies={"helexa_ui": cookie}, allow_redirects=False)
    again = await clients[0].get("/ui", cookies={"helexa_ui": cookie})
    assert again.status == 401


async def test_an_unload_through_one_gateway_is_seen_by_the_others_at_once(cluster):
    """No gateway routes for a poll interval to a replica another one unloaded: it tells them, and they look."""
    a = FakeNeuron("a")
    a.preload("m")
    clients, _ = await cluster([a], gateways=2, gateway={"poll_interval_seconds": 30}, auth={"admin_keys": ["sk-a"]})
    other = clients[1].app[peers_key].registry.neurons["a"]
    assert other.loaded("m")
    resp = await clients[0].post("/admin/models/m/unload", headers={"Authorization": "Bearer sk-a"})
    assert resp.status == 200
    seen = await until(lambda: not other.loaded("m"), 3, "the other gateway saw the unload")
    assert seen < 2  # not its 30 s poll


@pytest.mark.parametrize(("gateways", "served"), [(0, 6), (3, 2)])
async def test_a_gateway_started_while_the_store_is_down_takes_its_share(
    aiohttp_server, aiohttp_client, version, gateways, served
):
    """A gateway that never reached its store saw no peers: alone it would admit a key's whole limit (3 such
    gateways, 3 x the limit); with ``[cluster] gateways`` it takes its share of the count it was told."""
    a = FakeNeuron("a")
    a.preload("warm")
    server = await aiohttp_server(a.app())
    cfg = make_config(
        neurons=[{"name": "a", "endpoint": str(server.make_url("")).rstrip("/")}],
        models=[entry("warm", 8000)],
        gateway={"poll_interval_seconds": 0.2},
        cluster={"store": f"redis://127.0.0.1:{free_port()}/0", "name": "gw0", "gateways": gateways},
        auth={"keys": [{"name": "tight", "key": "sk-t", "requests_per_minute": 6}]},
    )
    client = await aiohttp_client(make_gateway_app(cfg, version))
    await wait_healthy(client, 1)
    statuses = [(await chat(client, "warm", headers={"Authorization": "Bearer sk-t"})).status for _ in range(8)]
    assert statuses.count(200) == served and set(statuses) == {200, 429}, statuses
