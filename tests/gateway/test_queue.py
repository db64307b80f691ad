"""The scheduler's queue end to end: fake neurons that count their loads, the gateway app in between."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import generate_latest

from helexa.gateway.state import router_key
from helexa.server.app import registry_key
from tests.conftest import until
from tests.fakes.fake_neuron import FakeNeuron
from tests.gateway.conftest import entry
from tests.gateway.test_gateway import chat, metric

ONE_SLOT = {"devices": [10000]}  # holds one 8000 MiB model at a time


async def stream(client, model, key: str = "") -> tuple[int, float]:
    """A streamed chat read to its end: (status, seconds it took)."""
    began = time.monotonic()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        headers=headers,
    )
    body = await resp.read()
    assert b"[DONE]" in body or resp.status != 200, body[-300:]
    return resp.status, time.monotonic() - began


@pytest.mark.parametrize("policy", ["fifo", "swap-aware"])
async def test_a_mixed_burst_swaps_once_per_model_with_swap_aware(fleet, policy):
    a = FakeNeuron("a", chunk_delay=0.03, load_delay=0.05, **ONE_SLOT)
    client, _ = await fleet(
        [a], models=[entry(m) for m in "xyz"], scheduler={"policy": policy, "max_queue_wait_seconds": 60}
    )
    order = "xyzxyzxyzxyz"
    opened = []
    for model in order:  # arrival order as written: a stream's headers come back once the gateway routes it
        body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        opened.append(await client.post("/v1/chat/completions", json=body))
    bodies = await asyncio.gather(*(resp.read() for resp in opened))
    assert all(b"[DONE]" in body for body in bodies), bodies
    statuses = [resp.status for resp in opened]
    assert statuses == [200] * len(order)
    exported = generate_latest(client.app[registry_key]).decode()
    swaps = sum(metric(exported, "helexa_gateway_swaps_total", model=m) for m in "xyz")
    assert swaps == len(a.loads) - 1  # every load after the first one unloaded another model
    if policy == "swap-aware":
        assert a.loads == ["x", "y", "z"], a.loads  # one load serves every request waiting for its model
        assert a.served == sorted(a.served, key="xyz".index)
    else:
        assert len(a.loads) >= 8, a.loads  # a swap per request, nearly


async def test_a_waiting_request_is_served_within_max_wait_even_while_the_loaded_model_stays_busy(fleet):
    a = FakeNeuron("a", chunk_delay=0.05, **ONE_SLOT)
    a.preload("x", 8000)
    client, _ = await fleet([a], models=[entry("x"), entry("y")], scheduler={"max_queue_wait_seconds": 0.5})
    stop = time.monotonic() + 4.0

    async def keep_busy():  # two overlapping streams for x at all times
        while time.monotonic() < stop:
            await asyncio.gather(stream(client, "x"), stream(client, "x"))

    busy = [asyncio.create_task(keep_busy()) for _ in range(2)]
    state = client.app[router_key].registry.neurons["a"]
    await until(lambda: state.in_flight.get("x", 0) >= 3, 5, "x busy")
    status, took = await stream(client, "y")
    assert status == 200
    assert took < 2.5, f"y waited {took:.1f}s although max_queue_wait_seconds is 0.5"
    assert time.monotonic() < stop, "y was served only when x's requests stopped"
    await asyncio.gather(*busy)
    assert "y" in a.loads


async def test_batch_keys_wait_behind_a_model_interactive_keys_use(fleet):
    a = FakeNeuron("a", **ONE_SLOT)
    a.preload("x", 8000)
    keys = [
        {"name": "alice", "key": "sk-alice", "priority": "interactive"},
        {"name": "bot", "key": "sk-bot", "priority": "batch"},
    ]
    client, _ = await fleet(
        [a], models=[entry("x"), entry("y")], auth={"keys": keys}, scheduler={"priority_hold_seconds": 1.5}
    )
    assert (await stream(client, "x", "sk-alice"))[0] == 200  # alice uses x
    status, took = await stream(client, "y", "sk-bot")
    assert status == 200
    assert took >= 1.2, f"the batch request evicted x {took:.2f}s after alice used it (hold 1.5s)"
    assert a.loads == ["y"] and a.unloads == [("x", False)]
    # an interactive request for x is not held back by the batch key's use of y
    began = time.monotonic()
    assert (await stream(client, "x", "sk-alice"))[0] == 200
    assert time.monotonic() - began < 1.0


async def test_one_key_cannot_fill_the_queue_for_others(fleet):
    a = FakeNeuron("a", load_delay=0.5)
    keys = [{"name": "k1", "key": "sk-1"}, {"name": "k2", "key": "sk-2"}]
    client, _ = await fleet([a], models=[entry("cold")], auth={"keys": keys}, gateway={"load_queue_limit": 2})

    async def ask(key):
        resp = await client.post(
            "/v1/chat/completions",
            json={"model": "cold", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {key}"},
        )
        return resp.status, (await resp.json())

    greedy = [asyncio.create_task(ask("sk-1")) for _ in range(5)]
    await asyncio.sleep(0.1)
    other = await ask("sk-2")
    assert other[0] == 200
    answers = await asyncio.gather(*greedy)
    assert sorted(s for s, _ in answers) == [200, 200, 503, 503, 503]
    refused = next(body for s, body in answers if s == 503)["error"]
    assert refused["type"] == "service_unavailable_error" and "requests of this key already wait" in refused["message"]


async def test_queue_length_by_model_and_priority_is_in_the_metrics(fleet):
    a = FakeNeuron("a", load_delay=0.6, **ONE_SLOT)
    keys = [{"name": "bot", "key": "sk-bot", "priority": "batch"}]
    client, _ = await fleet([a], models=[entry("x")], auth={"keys": keys})
    waiting = [asyncio.create_task(stream(client, "x", "sk-bot")) for _ in range(3)]
    await until(lambda: a.loads, 5, "the load began")
    during = generate_latest(client.app[registry_key]).decode()
    assert metric(during, "helexa_gateway_load_queue_requests", model="x", priority="batch") == 3
    page = await (await client.get("/ui", headers={"Authorization": "Bearer sk-bot"})).text()
    assert '<tr class="queue" data-model="x"><td>x</td><td>0 / 0 / 3</td>' in page  # interactive / normal / batch
    assert "policy <b>swap-aware</b>" in page
    await asyncio.gather(*waiting)
    after = generate_latest(client.app[registry_key]).decode()
    assert metric(after, "helexa_gateway_load_queue_requests", model="x", priority="batch") == 0
    assert metric(after, "helexa_gateway_queue_wait_seconds_count", model="x", priority="batch") == 3


async def test_idle_models_are_unloaded_after_their_idle_time_with_an_injected_clock(fleet):
    a = FakeNeuron("a", devices=[80000])
    for model in ("idle", "never", "pinned", "recent"):
        a.preload(model, 8000)
    client, _ = await fleet(
        [a],
        models=[
            entry("idle"),
            entry("never", idle_unload_seconds=0),
            entry("pinned", pinned_on=["a"]),
            entry("recent"),
        ],
        eviction={"idle_unload_seconds": 60},
    )
    queue = client.app[router_key].queue
    now = [time.monotonic()]  # frozen from here on: only the test moves it
    queue.clock = lambda: now[0]
    polls = queue.registry.neurons["a"].polls
    await until(lambda: queue.registry.neurons["a"].polls > polls + 1, 5, "a poll with the new clock")
    for model in ("idle", "never", "pinned", "recent"):
        queue.registry.neurons["a"].last_used[model] = now[0]  # as first seen by this clock
    now[0] += 50
    assert (await chat(client, "recent")).status == 200  # used at +50
    now[0] += 11  # +61: idle for 61 s; recent for 11 s
    await until(lambda: a.unloads, 5, "an idle unload")
    await asyncio.sleep(0.2)  # a few more polls: nothing else goes
    assert a.unloads == [("idle", False)]  # to the sleep tier where there is one (stop = False)
    exported = generate_latest(client.app[registry_key]).decode()
    assert metric(exported, "helexa_gateway_idle_unloads_total", model="idle", neuron="a") == 1
    now[0] += 60
    await until(lambda: len(a.unloads) == 2, 5, "the second idle unload")
    assert a.unloads[1] == ("recent", False)
    assert set(a.models) == {"never", "pinned"}


async def test_cpu_neurons_count_the_memory_models_declare_not_what_the_kernel_calls_available(fleet):
    # llama.cpp mmaps its weights: the kernel counts them as page cache, "available". The catalogue's vram_mb
    # is what a model holds on a CPU host, so a second model that would not fit beside it swaps it out.
    a = FakeNeuron("cpu", devices=[], ram_mb=16000)
    a.preload("big", 0)  # the fake reports all its RAM available, as a host with an mmap'ed model does
    client, _ = await fleet([a], models=[entry("big", 10000, harness="llamacpp"), entry("small", 8000)])
    assert (await chat(client, "small")).status == 200
    assert a.unloads == [("big", False)] and a.loads == ["small"]
