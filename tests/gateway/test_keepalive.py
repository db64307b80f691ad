"""Streams open at once: headers and the dialect's opening events before the engine's first byte, then
keep-alives while a cold load runs; a failure after that is the dialect's final error event."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest

from helexa.gateway.keepalive import KeepAlives
from tests.fakes.fake_neuron import FakeNeuron
from tests.gateway.conftest import entry

MESSAGES = [{"role": "user", "content": "hi"}]
BODIES = {
    "/v1/messages": {"model": "m", "max_tokens": 16, "stream": True, "messages": MESSAGES},
    "/v1/responses": {"model": "m", "input": "hi", "stream": True},
    "/v1/chat/completions": {"model": "m", "stream": True, "messages": MESSAGES},
}
OPENING = {
    "/v1/messages": b"event: message_start",
    "/v1/responses": b"event: response.created",
    "/v1/chat/completions": b"",
}
KEEPALIVE = {"/v1/messages": b"event: ping", "/v1/responses": b"", "/v1/chat/completions": b": keep-alive"}


async def read_until_closed(resp) -> list[tuple[float, bytes]]:
    """Every chunk of the body with the time it arrived."""
    chunks = []
    async for data in resp.content.iter_any():
        chunks.append((time.monotonic(), data))
    return chunks


@pytest.mark.parametrize("path", list(BODIES))
async def test_a_stream_opens_before_the_cold_load_ends_and_stays_alive(fleet, path):
    a = FakeNeuron("a", load_delay=1.0)
    client, _ = await fleet([a], models=[entry("m", 1000)], gateway={"keepalive_seconds": 0.1})
    began = time.monotonic()
    resp = await client.post(path, json=BODIES[path])
    headers_at = time.monotonic() - began
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    assert headers_at < 0.8, f"headers came after {headers_at:.2f}s, only when the 1 s load ended"
    chunks = await asyncio.wait_for(read_until_closed(resp), 10)
    body = b"".join(c for _, c in chunks)
    early = b"".join(c for t, c in chunks if t - began < 0.9)  # what arrived while the model was still loading
    assert early.startswith(OPENING[path]) or not OPENING[path]
    if KEEPALIVE[path]:
        assert early.count(KEEPALIVE[path]) >= 3, early
    assert a.loads == ["m"]
    text = body.decode()
    assert "Hello" in text and "fake" in text  # the answer itself followed
    if path == "/v1/messages":
        assert text.rstrip().endswith('data: {"type":"message_stop"}')
    elif path == "/v1/responses":
        assert "event: response.completed" in text
    else:
        assert text.rstrip().endswith("data: [DONE]")


async def test_an_unknown_model_is_still_a_plain_404_on_a_stream(fleet):
    client, _ = await fleet([FakeNeuron("a")])
    for path, body in BODIES.items():
        resp = await client.post(path, json={**body, "model": "nope"})
        assert resp.status == 404, path
        assert resp.content_type == "application/json"


async def test_a_refused_cold_load_is_the_dialects_final_error_event(fleet):
    reject = {"kind": "insufficient_vram", "message": "needs 90000 MiB, 24000 free", "suggestion": "pick a quant"}
    a = FakeNeuron("a", reject=reject)
    client, _ = await fleet([a], models=[entry("m", 1000)], gateway={"keepalive_seconds": 0.1})

    resp = await client.post("/v1/messages", json=BODIES["/v1/messages"])
    text = await resp.text()
    assert resp.status == 200 and text.startswith("event: message_start")
    last = text.strip().split("\n\n")[-1]
    assert last.startswith("event: error")
    error = msgspec.json.decode(last.split("data: ", 1)[1])
    assert error["error"]["type"] == "invalid_request_error" and "90000 MiB" in error["error"]["message"]

    resp = await client.post("/v1/responses", json=BODIES["/v1/responses"])
    last = (await resp.text()).strip().split("\n\n")[-1]
    assert last.startswith("event: response.failed")
    failed = msgspec.json.decode(last.split("data: ", 1)[1])
    assert failed["response"]["status"] == "failed" and "90000 MiB" in failed["response"]["error"]["message"]

    resp = await client.post("/v1/chat/completions", json=BODIES["/v1/chat/completions"])
    last = (await resp.text()).strip().split("\n\n")[-1]
    error = msgspec.json.decode(last.removeprefix("data: "))
    assert "90000 MiB" in error["error"]["message"]
    # the gateway serves on
    assert (await client.get("/v1/models")).status == 200


class Recorder:
    """A stand-in for an open stream: records what was written; ``gone`` raises as a client that left."""

    def __init__(self, gone: bool = False) -> None:
        self.writes: list[bytes] = []
        self.gone = gone

    async def write(self, data: bytes) -> None:
        if self.gone:
            raise ConnectionResetError("client left")
        self.writes.append(data)


async def test_one_timer_keeps_every_waiting_stream_alive_and_none_after_it_stopped():
    keepalives = KeepAlives(0.05)
    streams = [Recorder() for _ in range(50)]
    gone = Recorder(gone=True)
    blocks = [keepalives.waiting(s, b": ka\n\n") for s in [*streams, gone]]
    for block in blocks:
        await block.__aenter__()
    await asyncio.sleep(0.28)
    assert all(4 <= len(s.writes) <= 6 for s in streams), [len(s.writes) for s in streams]
    assert all(w == b": ka\n\n" for s in streams for w in s.writes)
    assert gone not in keepalives._waiting  # a client that left is dropped at its first keep-alive
    for block in blocks[:25]:
        await block.stop()
    counts = [len(s.writes) for s in streams]
    await asyncio.sleep(0.15)
    assert [len(s.writes) for s in streams[:25]] == counts[:25], "a stopped stream got a keep-alive"
    assert all(len(s.writes) > n for s, n in zip(streams[25:], counts[25:], strict=True))
    for block in blocks[25:]:
        await block.__aexit__(None, None, None)
    await asyncio.sleep(0.1)
    assert keepalives._timer is None and not keepalives._waiting  # nothing waits: no timer runs
    keepalives.close()
