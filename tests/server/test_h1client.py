"""The relay's HTTP/1.1 client against a real aiohttp server and against scripted servers that misbehave.

What it must do: reuse one keep-alive connection, parse lengths and chunks, relay a stream from the socket
callback with backpressure, never reuse a kept-alive connection the server closed, never send a request twice,
and turn every broken or hostile answer into ``UpstreamError`` — never hang, never reuse a connection
mid-answer, never hold more of an answer than its limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import threading
import time

import pytest
from aiohttp import web

from helexa.errors import UpstreamError
from helexa.server.h1client import MAX_HEAD_BYTES, READ_AHEAD, Upstream
from tests.conftest import free_port
from tests.tools import debian_tool


def _neuron_app(peers: list) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername"))
        body = await request.json()
        if body.get("big"):
            return web.Response(body=b"x" * body["big"], content_type="application/json")
        if body.get("stream"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for i in range(body.get("n", 3)):
                await response.write(b"data: %d\n\n" % i)
                await asyncio.sleep(body.get("pace", 0))
            await response.write_eof()
            return response
        return web.json_response(
            {"echo": body, "auth": request.headers.get("Authorization"), "rid": request.headers.get("x-request-id")}
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/prefix/v1/chat/completions", chat)
    return app


async def test_answers_over_one_kept_alive_connection(aiohttp_server):
    peers: list = []
    server = await aiohttp_server(_neuron_app(peers))
    upstream = Upstream(str(server.make_url("/")), {"Authorization": "Bearer t"})
    for i in range(3):
        async with await upstream.post("/v1/chat/completions", b'{"i": %d}' % i, {"x-request-id": f"r{i}"}) as resp:
            assert resp.status == 200 and resp.content_type == "application/json"
            assert resp.headers["content-type"].startswith("application/json")
            data = await resp.read()
        assert b'"echo": {"i": %d}' % i in data and b'"auth": "Bearer t"' in data and b'"rid": "r%d"' % i in data
    assert len(set(peers)) == 1  # one connection for all three
    upstream.close()


async def test_a_large_answer_read_whole(aiohttp_server):
    server = await aiohttp_server(_neuron_app([]))
    upstream = Upstream(str(server.make_url("/")))
    body = b'{"big": %d}' % (4 << 20)
    async with await upstream.post("/v1/chat/completions", body) as resp:
        data = await resp.read()
    assert data == b"x" * (4 << 20)
    async with await upstream.post("/v1/chat/completions", body) as resp:  # and piece by piece
        pieces = []
        while piece := await resp.readany():
            pieces.append(piece)
    assert b"".join(pieces) == data and len(pieces) > 1
    upstream.close()


async def test_a_prefix_in_the_endpoint_is_kept(aiohttp_server):
    server = await aiohttp_server(_neuron_app([]))
    upstream = Upstream(str(server.make_url("/prefix/")))
    async with await upstream.post("/v1/chat/completions", b"{}") as resp:
        assert resp.status == 200
    upstream.close()


async def test_a_stream_read_piece_by_piece_and_relayed(aiohttp_server):
    peers: list = []
    server = await aiohttp_server(_neuron_app(peers))
    upstream = Upstream(str(server.make_url("/")))
    async with await upstream.post("/v1/chat/completions", b'{"stream": true, "n": 5}') as resp:
        assert resp.content_type == "text/event-stream"
        pieces = []
        while data := await resp.readany():
            pieces.append(data)
    assert b"".join(pieces) == b"".join(b"data: %d\n\n" % i for i in range(5))

    got: list[bytes] = []

    async def drain() -> None:
        raise AssertionError("never full")

    async with await upstream.post("/v1/chat/completions", b'{"stream": true, "n": 200}') as resp:
        await resp.relay(lambda piece: got.append(piece) or False, drain)
    assert b"".join(got) == b"".join(b"data: %d\n\n" % i for i in range(200))
    assert len(set(peers)) == 1  # both streams, read to their end, on one connection
    upstream.close()


async def test_a_burst_goes_out_in_few_pieces_and_a_token_stream_piece_by_piece(aiohttp_server):
    server = await aiohttp_server(_neuron_app([]))
    upstream = Upstream(str(server.make_url("/")))

    async def drain() -> None:
        pass

    for body, events in ((b'{"stream": true, "n": 500}', 500), (b'{"stream": true, "n": 20, "pace": 0.005}', 20)):
        got: list[bytes] = []
        async with await upstream.post("/v1/chat/completions", body) as resp:
            await resp.relay(lambda piece: got.append(piece) or False, drain)  # noqa: B023
        assert b"".join(got) == b"".join(b"data: %d\n\n" % i for i in range(events))
        if events == 500:
            assert len(got) < 100, len(got)  # written as fast as the server could: collected
        else:
            assert len(got) >= events - 1, got  # 5 ms apart (> BURST_S): one by one as they came
    upstream.close()


async def test_a_full_sink_pauses_reading_until_it_drained(aiohttp_server):
    server = await aiohttp_server(_neuron_app([]))
    upstream = Upstream(str(server.make_url("/")))
    got: list[bytes] = []
    drains = []

    def sink(piece: bytes) -> bool:
        got.append(piece)
        return True  # full after every piece

    async def drain() -> None:
        before = len(got)
        await asyncio.sleep(0.01)  # the server goes on writing meanwhile; nothing reaches the sink
        drains.append((before, len(got)))

    async with await upstream.post("/v1/chat/completions", b'{"stream": true, "n": 1000}') as resp:
        await resp.relay(sink, drain)
    assert b"".join(got) == b"".join(b"data: %d\n\n" % i for i in range(1000))
    assert drains and all(before == after for before, after in drains), drains
    upstream.close()


async def test_a_sink_that_fails_abandons_the_answer(aiohttp_server):
    peers: list = []
    server = await aiohttp_server(_neuron_app(peers))
    upstream = Upstream(str(server.make_url("/")))

    def sink(piece: bytes) -> bool:
        raise ConnectionResetError("the client went away")

    async def drain() -> None:
        pass

    async with await upstream.post("/v1/chat/completions", b'{"stream": true, "n": 1000}') as resp:
        with pytest.raises(ConnectionResetError):
            await resp.relay(sink, drain)
    async with await upstream.post("/v1/chat/completions", b"{}") as resp:
        assert resp.status == 200
    assert len(set(peers)) == 2  # the abandoned connection was not reused
    upstream.close()


class Scripted:
    """A TCP server that answers each request on a connection with the next of ``answers`` (bytes, or None to
    close the connection at once; ``close_after``: after every answer too); counts connections."""

    def __init__(self, *answers: bytes | None, per_connection: bool = False, close_after: bool = False) -> None:
        self.answers, self.per_connection, self.close_after = list(answers), per_connection, close_after
        self.connections = 0
        self.requests: list[bytes] = []
        self.lost = asyncio.Event()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", free_port())
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        answers = list(self.answers) if self.per_connection else self.answers
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                self.requests.append(head + await reader.readexactly(length))
                answer = answers.pop(0) if answers else None
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()
        self.lost.set()

    def close(self) -> None:
        self.server.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class ThreadServer:
    """A blocking server in a thread (its own clock, not the test's event loop): answers one request with ``OK``
    on each connection, then closes that connection when ``close()`` is called."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", free_port()))
        self.connections, self.requests = 0, 0
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self.conns.append(conn)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            self.requests += 1
            conn.sendall(OK)

    def close_connections(self) -> None:
        for conn in self.conns:
            conn.close()

    def stop(self) -> None:
        self.close_connections()
        self.sock.close()


async def test_a_kept_alive_connection_the_server_closed_is_not_used():
    # the server closes its idle connection; the event loop has not read the end of file yet (the test does not
    # yield to it): the reuse check sees it, and the request goes on a fresh connection, once
    server = ThreadServer()
    upstream = Upstream(server.url)
    async with await upstream.post("/v1/chat/completions", b"{}") as resp:
        assert await resp.read() == b"{}"
    server.close_connections()
    time.sleep(0.05)  # noqa: ASYNC251  (blocking on purpose: the FIN is in the kernel, the loop has not seen it)
    assert not upstream._idle[0].closed
    async with await upstream.post("/v1/chat/completions", b"{}") as resp:
        assert await resp.read() == b"{}"
    assert server.connections == 2 and server.requests == 2
    upstream.close()
    server.stop()


async def test_a_request_the_server_dropped_unanswered_is_not_sent_again():
    # each connection: one answer, then the next request is read and dropped (a neuron that died mid-generation)
    server = Scripted(OK, None, per_connection=True)
    upstream = Upstream(await server.start(), label="neuron x")
    async with await upstream.post("/v1/chat/completions", b"{}") as resp:
        assert await resp.read() == b"{}"
    with pytest.raises(UpstreamError, match=r"neuron x \(http://127.0.0.1:\d+\) closed the connection without answ"):
        await upstream.post("/v1/chat/completions", b'{"n": 2}')
    assert server.connections == 1 and len(server.requests) == 2  # it reached the server once: never again
    async with await upstream.post("/v1/chat/completions", b"{}") as resp:  # the next one: a fresh connection
        assert await resp.read() == b"{}"
    assert server.connections == 2
    upstream.close()
    server.close()


async def test_a_fresh_connection_dropped_without_an_answer_is_an_error_at_once():
    server = Scripted(None)  # the server may have seen the request: not sent again
    upstream = Upstream(await server.start(), label="neuron x")
    with pytest.raises(UpstreamError, match=r"neuron x \(http://127.0.0.1:\d+\) closed the connection without"):
        await upstream.post("/v1/chat/completions", b"{}")
    assert server.connections == 1 and len(server.requests) == 1
    upstream.close()
    server.close()


async def test_nothing_listening_is_an_error_at_once():
    upstream = Upstream(f"http://127.0.0.1:{free_port()}", label="neuron gone")
    with pytest.raises(UpstreamError, match="neuron gone .* is not reachable") as info:
        await upstream.post("/v1/chat/completions", b"{}")
    assert info.value.status == 502


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"garbage\r\n\r\n", "malformed answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort\r\n\r\n", "broke off"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n", "malformed answer"),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES + 10), "head is longer than"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc", "malformed answer"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\nxx", "switched protocols"),
    ],
    ids=["garbage", "cut body", "bad chunk", "endless head", "two lengths", "upgrade"],
)
async def test_broken_answers_are_upstream_errors(answer, message):
    server = Scripted(answer, None, close_after=True)
    upstream = Upstream(await server.start())
    with pytest.raises(UpstreamError, match=message):
        async with await upstream.post("/v1/chat/completions", b"{}") as resp:
            await resp.read()
    server.answers[:] = [OK]
    async with await upstream.post("/v1/chat/completions", b"{}") as resp:  # a new connection, not the broken one
        assert await resp.read() == b"{}"
    assert server.connections == 2
    upstream.close()
    server.close()


async def test_a_second_answer_behind_the_first_closes_the_connection():
    # an answer, then the start of another nobody asked for, in one packet: the first is read; the connection,
    # mid-parse now, is never reused (its next request would read the stray bytes as its answer)
    server = Scripted(OK + b"HTTP/1.1 200 OK\r\nContent-Len", OK)
    upstream = Upstream(await server.start())
    async with await upstream.post("/v1/chat/completions", b"{}") as resp:
        assert await resp.read() == b"{}"
    await server.lost.wait()  # closed by the client
    async with await upstream.post("/v1/chat/completions", b"{}") as resp:
        assert await resp.read() == b"{}"
    assert server.connections == 2
    upstream.close()
    server.close()


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 800000000\r\n\r\n{",
        b"HTTP/1.1 500 Oops\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"1000\r\n"
        + b"x" * 4096
        + b"\r\n",
    ],
    ids=["content-length", "chunked"],
)
async def test_an_answer_read_whole_is_capped(head):
    """A neuron that announces (or sends) more than ``max_body`` fails the read at once — its status was the
    head's — and the connection is closed; nothing past the cap is held."""

    async def serve(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(head)
        with contextlib.suppress(ConnectionError):
            while True:  # keeps sending (a chunked body without end) until the client closes
                writer.write(b"1000\r\n" + b"x" * 4096 + b"\r\n" if b"chunked" in head else b"x" * 4096)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", free_port())
    port = server.sockets[0].getsockname()[1]
    upstream = Upstream(f"http://127.0.0.1:{port}", label="neuron big", max_body=64 * 1024)
    resp = await upstream.post("/v1/chat/completions", b"{}")
    with pytest.raises(UpstreamError, match=r"neuron big .* an answer read whole may hold at most 65536 bytes"):
        await asyncio.wait_for(resp.read(), 5)
    assert resp._buffered <= 64 * 1024 + 512 * 1024  # the cap, and at most what one read of the socket brought
    assert not upstream._open  # the connection is closed
    server.close()


async def test_a_stream_read_piece_by_piece_is_not_capped_and_pauses_the_socket(aiohttp_server):
    """readany() may read far more than max_body in all, piece by piece; while its reader is slow, at most
    READ_AHEAD waits unread (reading the socket pauses), and nothing is lost."""
    peers: list = []
    server = await aiohttp_server(_neuron_app(peers))
    upstream = Upstream(str(server.make_url("/")), max_body=64 * 1024)
    body = b'{"stream": true, "n": 20000}'
    async with await upstream.post("/v1/chat/completions", body) as resp:
        got, most = bytearray(), 0
        while piece := await resp.readany():
            got += piece
            most = max(most, len(piece))
            if len(got) < 50_000:
                await asyncio.sleep(0.05)  # a slow reader at first: the neuron runs ahead
    assert got.count(b"\n\n") == 20000 and len(got) > 64 * 1024
    assert most <= READ_AHEAD + 64 * 1024, most
    upstream.close()


async def test_a_body_that_ends_with_the_connection():
    server = Scripted(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it", close_after=True)
    upstream = Upstream(await server.start())
    resp = await upstream.post("/v1/chat/completions", b"{}")
    assert await resp.read() == b"all of it" and resp.content_type == "text/plain"
    upstream.close()
    server.close()


async def test_an_informational_answer_is_skipped():
    server = Scripted(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
    upstream = Upstream(await server.start())
    async with await upstream.post("/v1/chat/completions", b"{}") as resp:
        assert resp.status == 200 and await resp.read() == b"{}"
    upstream.close()
    server.close()


async def test_an_abandoned_answer_closes_its_connection(aiohttp_server):
    peers: list = []
    server = await aiohttp_server(_neuron_app(peers))
    upstream = Upstream(str(server.make_url("/")))
    resp = await upstream.post("/v1/chat/completions", b'{"stream": true, "n": 1000}')
    resp.release()  # not read to its end
    with pytest.raises(UpstreamError, match="was closed"):
        await resp.read()
    async with await upstream.post("/v1/chat/completions", b"{}") as resp:
        assert resp.status == 200
    assert len(set(peers)) == 2
    upstream.close()


async def test_cancelling_a_request_closes_its_connection():
    server = Scripted()  # reads the request, never answers, holds the connection

    async def hold(reader, writer):
        server.connections += 1
        await reader.readuntil(b"\r\n\r\n")
        await reader.read()  # until the client closes
        server.lost.set()

    server._serve = hold  # type: ignore[method-assign]
    upstream = Upstream(await server.start())
    task = asyncio.create_task(upstream.post("/v1/chat/completions", b"{}"))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.wait_for(server.lost.wait(), 5)  # the server saw the client go
    upstream.close()
    server.close()


async def test_closing_the_pool_ends_an_answer_being_read():
    server = Scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
    upstream = Upstream(await server.start())
    resp = await upstream.post("/v1/chat/completions", b"{}")
    reading = asyncio.create_task(resp.read())
    await asyncio.sleep(0.05)
    upstream.close()
    with pytest.raises(UpstreamError):
        await asyncio.wait_for(reading, 5)
    server.close()


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/v1/chat completions", None),
        ("v1", None),
        ("/v1/\r\nX-Evil: 1", None),
        ("/v1", {"x-request-id": "a\r\nX-Evil: 1"}),
        ("/v1", {"x-request-id": "é"}),
    ],
)
async def test_what_would_split_the_request_is_refused(path, headers):
    server = Scripted(OK)
    upstream = Upstream(await server.start())
    with pytest.raises(ValueError):
        await upstream.post(path, b"{}", headers)
    assert server.connections == 0
    server.close()


def test_an_endpoint_is_an_http_url():
    for bad in ("ftp://x", "127.0.0.1:80", "http://"):
        with pytest.raises(ValueError, match="expected an http"):
            Upstream(bad)
    with pytest.raises(ValueError, match="one line"):
        Upstream("http://x", {"Authorization": "Bearer a\nb"})


def _certificate(tmp_path, host: str) -> tuple[str, str]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    openssl = debian_tool("openssl", "openssl")
    subject = ["-subj", f"/CN={host}", "-addext", f"subjectAltName=IP:{host}"]
    files = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *subject, *files],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


async def test_an_https_neuron_is_verified(tmp_path, aiohttp_server, monkeypatch):
    cert, key = _certificate(tmp_path, "127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = await aiohttp_server(_neuron_app([]), ssl=context)
    url = f"https://127.0.0.1:{server.port}"
    untrusted = Upstream(url, label="neuron tls")
    with pytest.raises(UpstreamError, match="neuron tls .* is not reachable: .*certificate verify failed"):
        await untrusted.post("/v1/chat/completions", b"{}")
    monkeypatch.setenv("SSL_CERT_FILE", cert)  # the system's trust store, as an operator would extend it
    trusted = Upstream(url)
    async with await trusted.post("/v1/chat/completions", b'{"tls": 1}') as resp:
        assert resp.status == 200 and b'"tls": 1' in await resp.read()
    trusted.close()
