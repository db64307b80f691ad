"""A hung neuron (SIGSTOP: connections accepted, nothing answered) cannot hang clients.

The poller marks it down when a poll gets no answer within ``neuron_timeout_seconds``; requests waiting for it
fail over to another replica, or get an error; a stream it was serving ends with the final error event.
Bound: about ``poll_interval + neuron_timeout`` (here 0.2 s + 0.5 s; ≤ 15 s at the defaults of 5 s + 10 s).
"""

from __future__ import annotations

import asyncio
import json
import time

from helexa.gateway.state import lifecycle_key
from tests.conftest import until
from tests.fakes.fake_neuron import FakeNeuron

FAST = {"poll_interval_seconds": 0.2, "neuron_timeout_seconds": 0.5}
BOUND_S = 3 * FAST["poll_interval_seconds"] + FAST["neuron_timeout_seconds"] + 1.0
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def test_a_request_waiting_on_a_hung_neuron_fails_over_to_another_replica(fleet):
    a, b = FakeNeuron("a", hang_after_chunks=0), FakeNeuron("b")  # a hangs on the request itself
    a.preload("m")
    b.preload("m")
    client, _ = await fleet([a, b], gateway=FAST)
    began = time.monotonic()
    task = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))  # goes to a (ties: by name)
    await a.hung.wait()  # the request reached a, which hangs on it — and now its health checks hang too
    resp = await asyncio.wait_for(task, 10)
    assert resp.status == 200 and "Hello" in (await resp.json())["choices"][0]["message"]["content"]
    assert time.monotonic() - began < BOUND_S
    assert b.served == ["m"]
    # routing skips it while it is down
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200 and b.served == ["m", "m"]


async def test_the_only_replica_hanging_is_an_error_within_the_bound(fleet):
    a = FakeNeuron("a", hang_after_chunks=0)
    a.preload("m")
    client, _ = await fleet([a], gateway=FAST)
    began = time.monotonic()
    task = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
    await a.hung.wait()
    resp = await asyncio.wait_for(task, 10)
    assert resp.status in (502, 503), await resp.text()
    assert "stopped answering" in (await resp.json())["error"]["message"]
    assert time.monotonic() - began < BOUND_S


async def test_a_stream_from_a_neuron_that_hangs_mid_way_ends_with_an_error_event(fleet):
    a = FakeNeuron("a", hang_after_chunks=3, reply="one two three four five six")
    a.preload("m")
    client, _ = await fleet([a], gateway=FAST)
    began = time.monotonic()
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    task = asyncio.create_task(resp.text())
    await a.hung.wait()  # three chunks out, then it freezes (health checks too)
    text = await asyncio.wait_for(task, 10)
    assert time.monotonic() - began < BOUND_S
    last = text.strip().split("\n\n")[-1]
    assert "error" in json.loads(last.removeprefix("data: ")), text
    assert '"content": "one "' in text or '"content":"one "' in text  # what came before was relayed

    # while it is down, a new request gets a plain answer at once, not a hang — and not a 404: the model is
    # there, on a neuron that does not answer now
    resp = await asyncio.wait_for(client.post("/v1/messages", json={**CHAT, "max_tokens": 8, "stream": True}), 5)
    assert resp.status == 503 and (await resp.json())["type"] == "error"
    assert "do not answer now" in (await resp.json())["error"]["message"]


async def test_a_first_byte_limit_fails_over_while_the_slow_neuron_stays_healthy(fleet):
    a, b = FakeNeuron("a", hang_after_chunks=0), FakeNeuron("b")  # a accepts and never answers; its polls do
    a.preload("m")
    b.preload("m")
    client, _ = await fleet([a, b], gateway={"poll_interval_seconds": 0.2, "first_byte_timeout_seconds": 0.3})
    began = time.monotonic()
    resp = await asyncio.wait_for(client.post("/v1/chat/completions", json=CHAT), 5)
    assert resp.status == 200 and b.served == ["m"]
    assert time.monotonic() - began < 0.3 + 0.5

    c = FakeNeuron("c", hang_after_chunks=0)
    c.preload("m")
    only, _ = await fleet([c], gateway={"first_byte_timeout_seconds": 0.3})
    resp = await asyncio.wait_for(only.post("/v1/chat/completions", json=CHAT), 5)
    assert resp.status == 502
    assert "did not begin to answer within 0.3s" in (await resp.json())["error"]["message"]


async def test_one_slow_request_takes_no_replica_out_for_everyone(fleet):
    """A request that no replica begins to answer within first_byte_timeout fails (502, after trying each) — but
    on its word alone no neuron is marked down: the others' requests are served, the model stays listed, never
    a 404; the poller checks each suspect neuron at once and finds it answering."""
    a, b = FakeNeuron("a", slow_marker="ponder", slow_seconds=2), FakeNeuron("b", slow_marker="ponder", slow_seconds=2)
    a.preload("m")
    b.preload("m")
    client, _ = await fleet([a, b], gateway={"poll_interval_seconds": 30, "first_byte_timeout_seconds": 0.3})
    slow = {"model": "m", "messages": [{"role": "user", "content": "ponder deeply"}]}
    resp = await asyncio.wait_for(client.post("/v1/chat/completions", json=slow), 5)
    assert resp.status == 502 and "did not begin to answer within 0.3s" in (await resp.json())["error"]["message"]
    registry = client.app[lifecycle_key].registry
    assert all(n.healthy for n in registry.neurons.values())
    await until(lambda: not any(n.suspect for n in registry.neurons.values()), 3, "the probes clear the suspicion")
    for _ in range(4):
        resp = await client.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 200, await resp.text()
    models = await (await client.get("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == ["m"]
    assert len(a.served) + len(b.served) == 4
