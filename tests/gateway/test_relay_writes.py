"""A relayed stream is written to the client from the neuron connection's callback (BodyWriter): framed as aiohttp
would frame it for each HTTP version, and paced by a client that reads slowly."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from aiohttp import web

from helexa.gateway.state import lifecycle_key
from helexa.server import bodywriter
from tests.fakes.fake_neuron import FakeNeuron
from tests.gateway.conftest import wait_healthy

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def _raw_request(port: int, version: str, *, rcvbuf: int = 0, pause: float = 0.0) -> tuple[bytes, bytes]:
    """POST a streaming chat request over a bare socket; the answer's head and its raw body (to EOF, or to the
    chunked body's end)."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    body = json.dumps(CHAT).encode()
    writer.write(
        f"POST /v1/chat/completions HTTP/{version}\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    if pause:
        await asyncio.sleep(pause)  # reads nothing meanwhile: the gateway's send buffer fills
    data = await asyncio.wait_for(reader.read(), 60)
    writer.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _unchunk(body: bytes) -> bytes:
    out, pos = [], 0
    while True:
        end = body.index(b"\r\n", pos)
        size = int(body[pos:end], 16)
        if size == 0:
            return b"".join(out)
        out.append(body[end + 2 : end + 2 + size])
        assert body[end + 2 + size : end + 4 + size] == b"\r\n"
        pos = end + 4 + size


def _events(body: bytes) -> list[str]:
    return [e.removeprefix("data: ") for e in body.decode().split("\n\n") if e]


async def test_http_10_and_11_clients_get_the_same_events(fleet):
    a = FakeNeuron("a", reply="one two three")
    a.preload("m")
    client, _ = await fleet([a])
    port = client.server.port
    head11, body11 = await _raw_request(port, "1.1")
    assert b"200 OK" in head11.split(b"\r\n")[0] and b"transfer-encoding: chunked" in head11.lower()
    head10, body10 = await _raw_request(port, "1.0")
    assert b"200 OK" in head10.split(b"\r\n")[0] and b"transfer-encoding" not in head10.lower()
    events = _events(_unchunk(body11))
    assert events == _events(body10)  # HTTP/1.0: the bytes as they are, to the end of the connection
    assert [json.loads(e)["choices"][0]["delta"].get("content") for e in events[1:4]] == ["one ", "two ", "three "]
    assert events[-1] == "[DONE]"


async def test_a_client_that_reads_slowly_pauses_the_neuron_and_gets_every_event(fleet, monkeypatch):
    drains = []
    drain = bodywriter.BodyWriter.drain

    async def counted(self):
        drains.append(1)
        await drain(self)

    monkeypatch.setattr(bodywriter.BodyWriter, "drain", counted)
    words = [f"w{i:05d}" + "x" * 200 for i in range(20000)]  # ~5 MB of events
    a = FakeNeuron("a", reply=" ".join(words))
    a.preload("m")
    client, _ = await fleet([a])
    _, body = await _raw_request(client.server.port, "1.1", rcvbuf=4096, pause=1.0)
    events = _events(_unchunk(body))
    contents = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[1:-2]]
    assert contents == [w + " " for w in words]  # every event, in order, none cut
    assert events[-1] == "[DONE]"
    assert drains, "the client's full buffer never paused the relay"


class HostileNeuron(FakeNeuron):
    """Polls answered properly; the first inference request answered with raw ``answer`` bytes, then the
    connection closed; later ones as a fake neuron answers."""

    answer: bytes = b""

    async def chat(self, request):
        if self.answer:
            answer, self.answer = self.answer, b""
            request.transport.write(answer)
            request.transport.close()
            return web.Response()
        return await super().chat(request)


@pytest.mark.parametrize(
    "answer",
    [
        b"\x00\xff garbage \r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-A: b\rInjected: 1\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
        b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"cut',
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 29\r\n\r\n<script>alert('hi')</script>\n",
    ],
    ids=["garbage", "two lengths", "bare CR", "chunk too big", "cut", "endless head", "upgrade", "html"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_a_hostile_answer_is_a_clean_error_and_the_gateway_serves_on(fleet, answer, stream):
    a = HostileNeuron("a")
    a.preload("m")
    a.answer = answer
    client, _ = await fleet([a])
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
    if resp.content_type == "text/event-stream":  # a stream had begun (asked for, or the neuron's head said so)
        assert resp.status == 200
        last = (await resp.text()).strip().split("\n\n")[-1]
        error = json.loads(last.removeprefix("data: "))["error"]
    else:
        assert resp.status == 502, await resp.text()
        error = (await resp.json())["error"]
    assert error["code"] == "upstream_error" and "neuron a" in error["message"], error
    assert "Injected" not in resp.headers and resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.content_type in ("application/json", "text/event-stream")
    # the neuron was suspected (or marked down) for it; once polled healthy again, it serves
    await wait_healthy(client, 1)
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
    assert resp.status == 200 and "Hello" in (await resp.json())["choices"][0]["message"]["content"]


async def test_a_relayed_header_that_is_not_ascii_is_left_out(fleet):
    a = HostileNeuron("a")
    a.preload("m")
    a.answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-helexa-origin: caf\xc3\xa9\r\n"
        b"Retry-After: 7\r\nContent-Length: 2\r\n\r\n{}"
    )
    client, _ = await fleet([a])
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
    assert resp.status == 200 and await resp.read() == b"{}"
    assert resp.headers["x-helexa-origin"] == "neuron" and resp.headers["Retry-After"] == "7"


class FloodingNeuron(FakeNeuron):
    """Polls answered properly; inference answered with ``head``, then a body of ``mib`` MiB in 1 MiB pieces (chunked
    when the head says so) for as long as the gateway reads."""

    head: bytes = b""
    mib: int = 0
    sent: int = 0

    async def chat(self, request):
        writer = request.transport
        writer.write(self.head)
        piece = b"x" * (1 << 20)
        chunked = b"chunked" in self.head
        try:
            for _ in range(self.mib):
                if writer.is_closing():
                    break
                writer.write(b"100000\r\n" + piece + b"\r\n" if chunked else piece)
                self.sent += 1
                await asyncio.sleep(0)
                while writer.get_write_buffer_size() > 4 << 20 and not writer.is_closing():  # noqa: ASYNC110
                    await asyncio.sleep(0.005)  # the gateway reads no more: wait (it closes the connection)
        finally:
            writer.close()
        return web.Response()


def _peak_rss_reset() -> None:
    with open("/proc/self/clear_refs", "w") as fh:  # resets VmHWM, the peak resident size (Linux)
        fh.write("5")


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as fh:
        line = next(x for x in fh if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


@pytest.mark.parametrize(
    ("head", "stream"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 800000000\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n", False),
        (b"HTTP/1.1 500 Oops\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n", True),
    ],
    ids=["800 MB announced", "300 MB chunked", "300 MB error to a stream"],
)
async def test_a_huge_answer_is_a_502_and_memory_stays_bounded(fleet, head, stream):
    """The report: Content-Length 800000000 took the gateway from 53 MB to 1.6 GB; a 300 MB error answer to a
    stream request likewise. Every answer read whole is capped ([server] max_answer_mb): 502 naming the neuron,
    its connection closed, the gateway's peak memory growing by little more than the cap."""
    a = FloodingNeuron("a")
    a.preload("m")
    a.head, a.mib = head, 300
    client, _ = await fleet([a], server={"max_answer_mb": 8})
    _peak_rss_reset()
    before = _peak_rss_mib()
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
    if stream:
        text = await resp.text()
        error = json.loads(text.strip().split("\n\n")[-1].removeprefix("data: "))["error"]
    else:
        assert resp.status == 502, await resp.text()
        error = (await resp.json())["error"]
    grew = _peak_rss_mib() - before
    assert grew < 60, f"the gateway's peak memory grew by {grew:.0f} MiB"
    assert error["code"] == "upstream_error" and "neuron a" in error["message"], error
    assert "8388608 bytes" in error["message"], error
    assert a.sent < 40, f"the gateway read {a.sent} MiB of it"
    a.head = b""
    await wait_healthy(client, 1)
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
    assert resp.status == 502 or resp.status == 200  # (the flood again, or served: the gateway is alive)


async def test_a_second_answer_behind_the_first_costs_nothing(fleet):
    """The report: a partial extra answer left a pooled connection mid-parse, and the next request on it marked
    the neuron down. The connection is closed instead; the next request is served, the neuron never suspected."""
    a = HostileNeuron("a")
    a.preload("m")
    body = b'{"id": "x", "object": "chat.completion", "choices": []}'
    a.answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
        + b"HTTP/1.1 200 OK\r\nContent-Le"
    )
    client, _ = await fleet([a])
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
    assert resp.status == 200 and await resp.read() == body
    for _ in range(3):
        resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
        assert resp.status == 200, await resp.text()
    state = client.app[lifecycle_key].registry.neurons["a"]
    assert state.healthy and not state.suspect
