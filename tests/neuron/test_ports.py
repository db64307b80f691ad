"""Engine ports: every harness of a neuron draws from one allocator, and an engine whose port was taken before
it could bind is started again on another.

The bug this guards: each harness had its own allocator over the same range, so a llama.cpp load and a vLLM load
(which binds a minute after it starts) were handed the same port, and the late one failed.
"""

from __future__ import annotations

import asyncio
import socket

from helexa.neuron.state import manager_key
from tests.conftest import engine_ports
from tests.fakes.fake_harness import FakeHarness
from tests.neuron.conftest import fake_model


class OtherFakeHarness(FakeHarness):
    name = "fake2"


async def test_two_harnesses_never_get_the_same_port(neuron, monkeypatch):
    first, _ = engine_ports()
    harnesses = {"fake": FakeHarness, "fake2": OtherFakeHarness}
    models = [
        fake_model("late", "--bind-delay", "1.0"),  # binds a second after it starts, as vLLM does
        {**fake_model("early"), "harness": "fake2"},
    ]
    client = await neuron(neuron={"port_range": [first, first + 3]}, models=models, harnesses=harnesses)
    manager = client.app[manager_key]
    allocator = manager.harnesses["fake"]._ports
    assert allocator is manager.harnesses["fake2"]._ports  # one allocator
    handed = asyncio.Event()
    original = allocator.allocate

    def allocate() -> int:
        port = original()
        handed.set()
        return port

    monkeypatch.setattr(allocator, "allocate", allocate)
    late = asyncio.create_task(client.post("/models/load", json={"model_id": "late"}))
    await handed.wait()  # "late" has its port and has not bound it yet
    early = await client.post("/models/load", json={"model_id": "early"})
    assert early.status == 200, await early.text()
    resp = await late
    assert resp.status == 200, await resp.text()
    ports = {m: manager.harnesses[h].base_url(m) for m, h in (("late", "fake"), ("early", "fake2"))}
    assert len(set(ports.values())) == 2, ports


async def test_an_engine_whose_port_was_taken_starts_on_another(neuron, monkeypatch):
    first, _ = engine_ports()
    client = await neuron(neuron={"port_range": [first, first + 3]}, models=[fake_model("m")])
    allocator = client.app[manager_key].harnesses["fake"]._ports
    squatter = socket.socket()  # another program takes the port right after the neuron checked it
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    handed = []
    original = allocator.allocate

    def allocate() -> int:
        port = original()
        if not handed:
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
        handed.append(port)
        return port

    monkeypatch.setattr(allocator, "allocate", allocate)
    try:
        resp = await client.post("/models/load", json={"model_id": "m"})
        assert resp.status == 200, await resp.text()
    finally:
        squatter.close()
    assert len(handed) == 2 and handed[0] != handed[1]
    assert client.app[manager_key].harnesses["fake"].base_url("m").endswith(f":{handed[1]}")
