"""A lean HTTP/1.1 client for relaying inference to one upstream server (a neuron), the hot path's only client.

aiohttp's ``ClientSession`` stays the client for everything else (polls, loads, downloads). Relaying, it cost a
third of the gateway's CPU: per request a ``ClientRequest``, a ``ClientResponse``, a ``StreamReader``, a payload
object and several task switches; per streamed chunk a future and a wake-up of the reading task. Here a
request is one ``write`` of a pre-built head and the body on a pooled keep-alive connection; the answer is
parsed by llhttp (``httptools``, from uvloop's authors); its head wakes the caller once; a body that arrived
with it is there when the caller resumes; and :meth:`UpstreamResponse.relay` runs the caller's sink inside the
socket callback itself, so a streamed chunk goes on to the client without any task switch (what one turn of
the loop read goes out together; a burst, at most once per :data:`BURST_S`).

Contract: one request at a time per connection; a connection returns to the pool only after a complete answer
that allows keep-alive, and is closed when its answer is abandoned, cut, or malformed. Every address and every
header comes from the caller's configuration; paths and values are checked before they become request bytes.
"""

from __future__ import annotations

import asyncio
import re
import select
import ssl
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from urllib.parse import urlsplit

import httptools

from helexa.errors import UpstreamError

__all__ = ["BURST_S", "MAX_BODY_BYTES", "MAX_HEAD_BYTES", "READ_AHEAD", "Sink", "Upstream", "UpstreamResponse"]

MAX_HEAD_BYTES = 64 * 1024  # an answer's status line and headers, at most
MAX_BODY_BYTES = 64 * 1024 * 1024  # an answer read whole (or left unread), at most: the default of Upstream's limit
READ_AHEAD = 1024 * 1024  # read piece by piece, at most this much waits unread before reading the socket pauses
_PATH = re.compile(r"/[!-~]*")  # printable ASCII, no spaces: what may follow POST in the request line
_COALESCE = 16 * 1024  # head and body in one write below this; two (writelines) above
# A relayed burst goes out at most once per BURST_S: pieces that come closer together than that after a write
# wait (reading pauses, the rest collects in the socket) and go out together, at most BURST_S late. A token
# stream — a piece every few milliseconds — goes out piece by piece as it comes.
BURST_S = 0.001

# A body sink: gets each piece of the body as it arrives; returns True when its consumer is full (reading the
# socket pauses until the relay's drain returned). It runs in the socket callback: it must not block.
Sink = Callable[[bytes], bool]


class _OutOfStep(Exception):
    """Raised by a parser callback: the server answered what nobody asked (the connection cannot be reused)."""


def _header_lines(headers: Mapping[str, str]) -> str:
    """``Name: value`` lines. :raises ValueError: a value is not ASCII on one line (it would end the head)."""
    for name, value in headers.items():
        if "\r" in value or "\n" in value or not value.isascii():
            raise ValueError(f"header {name!r}: a value must be ASCII on one line")
    return "".join(f"{name}: {value}\r\n" for name, value in headers.items())


class Upstream:
    """One upstream server: its address (``http(s)://host:port[/prefix]``, from config), the headers every
    request carries, and its idle keep-alive connections (reused newest first, closed after ``idle_seconds``).
    ``max_body``: the most an answer read whole may hold (its ``Content-Length`` or what arrived unread); past
    it the answer fails with :class:`UpstreamError` and its connection is closed, so a hostile or broken server
    cannot grow this process's memory.

    :raises ValueError: (constructing) the endpoint is not an http(s) URL, or a header value spans lines.
    """

    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str] | None = None,
        *,
        connect_timeout: float = 10.0,
        idle_seconds: float = 30.0,
        label: str = "",
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        url = urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"expected an http(s) URL, got {endpoint!r}")
        self.endpoint = endpoint.rstrip("/")
        self.label = f"{label} ({self.endpoint})" if label else self.endpoint  # names it in error messages
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        self._prefix = url.path.rstrip("/")
        host = url.netloc.rpartition("@")[2]  # never the userinfo
        self._fixed = _header_lines({"Host": host, **(headers or {})})
        self.connect_timeout, self.idle_seconds, self.max_body = connect_timeout, idle_seconds, max_body
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        # the loop it runs in, bound at the first request (asyncio.get_running_loop() costs a getpid() on 3.11)
        self.loop: asyncio.AbstractEventLoop | None = None

    async def post(self, path: str, body: bytes, headers: Mapping[str, str] | None = None) -> UpstreamResponse:
        """POST ``body`` (JSON) to ``path`` with ``headers`` besides the fixed ones; the answer once its head came.

        Cancelling the call closes the connection (the server sees the request abandoned).

        A request is sent once, never again: a kept-alive connection is reused only after a check (one ``poll``)
        that the server has not closed it (nor sent anything unasked); one it closes after the request went out
        is an error, since the server may have begun the work (a generation) the request asks for.

        :raises UpstreamError: the server cannot be reached, or closed the connection without answering.
        :raises ValueError: ``path`` or a header is not fit for a request line or header.
        """
        if _PATH.fullmatch(path) is None:
            raise ValueError(f"not a request path: {path!r}")
        extra = _header_lines(headers) if headers else ""
        head = (
            f"POST {self._prefix}{path} HTTP/1.1\r\n{self._fixed}{extra}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode("ascii")
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        conn = self._reuse() or await self._connect()
        return await conn.request(head, body)

    def _reuse(self) -> _Connection | None:
        """The newest idle connection that is open, recent and quiet (the server neither closed it nor sent
        anything since its last answer: one ``poll`` of its socket, as the loop may not have read that yet)."""
        idle, now = self._idle, self.loop.time()  # type: ignore[union-attr]
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.idle_seconds and conn.quiet():
                return conn
            conn.close()
        return None

    async def _connect(self) -> _Connection:
        loop = self.loop
        assert loop is not None
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, loop),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except (OSError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise UpstreamError(f"{self.label} is not reachable: {reason}") from None
        return conn

    def _idle_again(self, conn: _Connection) -> None:
        conn.idle_since = conn.loop.time()
        self._idle.append(conn)

    def close(self) -> None:
        """Close every connection, idle or busy (an answer being read ends with :class:`UpstreamError`)."""
        for conn in list(self._open):
            conn.close()
        self._idle.clear()


class UpstreamResponse:
    """An answer whose head arrived: ``status``, ``headers`` (names lower-cased), ``content_type`` (no
    parameters, lower-cased), ``label`` (the upstream's name, for error messages); its body is read whole
    (:meth:`read`), piece by piece (:meth:`readany`) or relayed into a sink (:meth:`relay`), once. An ``async with``
    block (or :meth:`release`) ends it: the connection is closed unless the whole answer was read.
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_done",
        "_error",
        "_flushing",
        "_full",
        "_loop",
        "_pieces",
        "_sink",
        "_waiter",
        "_whole",
        "content_type",
        "headers",
        "label",
        "status",
    )

    def __init__(self, conn: _Connection) -> None:
        self._conn: _Connection | None = conn
        self._loop = conn.loop
        self.label = conn.upstream.label  # who answered, for error messages
        self.status = 0
        self.headers: dict[str, str] = {}
        self.content_type = "application/octet-stream"
        self._chunks: list[bytes] = []
        self._buffered = 0  # bytes in _chunks
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._sink: Sink | None = None
        self._full = False
        self._flushing = False  # a hand-over to the sink is scheduled
        self._whole = False  # read() waits: only the end matters
        self._pieces = False  # readany() reads it: at most READ_AHEAD waits unread

    async def read(self) -> bytes:
        """The whole body. :raises UpstreamError: the answer broke off, or is longer than the upstream's
        ``max_body`` (then its connection is closed)."""
        self._whole = True  # woken at the end (or an error), not by every read of the socket
        while not self._done and self._error is None:
            await self._wait()
        if self._error is not None:
            raise self._error
        return self._take()

    async def peek(self) -> bytes:
        """The whole body, kept for whoever reads or relays it next (:meth:`read`). :raises UpstreamError: as
        :meth:`read`."""
        data = await self.read()
        if data:
            self._chunks.append(data)
            self._buffered = len(data)
        return data

    def _take(self) -> bytes:
        """What arrived and was not read yet (emptied)."""
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        return data

    async def readany(self) -> bytes:
        """What arrived of the body since the last call (waiting for some); ``b""`` at its end.

        :raises UpstreamError: the answer broke off (after what arrived before was returned).
        """
        self._pieces = True
        while not self._chunks and not self._done and self._error is None:
            await self._wait()
        if self._chunks:
            data = self._take()
            conn = self._conn
            if conn is not None and conn.backlogged:  # it paused reading while this much waited: read on
                conn.backlogged = False
                conn.resume()
            return data
        if self._error is not None:
            raise self._error
        return b""

    async def relay(self, sink: Sink, drain: Callable[[], Awaitable[None]]) -> None:
        """Hand every piece of the body to ``sink`` as it arrives, from the socket callback; when ``sink``
        returns True, reading pauses until ``drain()`` returned. Returns at the body's end.

        :raises UpstreamError: the answer broke off.
        :raises Exception: what ``sink`` raised (the connection is then closed).
        """
        self._sink = sink
        while True:
            if self._chunks and (self._done or self._error is not None or not self._flushing):
                data = self._take()  # what came before the relay began, or before the end
                if sink(data) and not self._done and self._conn is not None:
                    self._conn.full()
            if self._error is not None:
                raise self._error
            if self._full:
                self._full = False
                await drain()
                conn = self._conn
                if conn is not None and not conn.closed:
                    conn.resume()
                continue
            if self._done:
                return
            await self._wait()

    def close(self) -> None:
        """Abandon the answer: the connection is closed; a read in progress raises :class:`UpstreamError`."""
        conn = self._conn
        if conn is not None:
            conn.close()

    def release(self) -> None:
        """End the answer: the connection goes back to the pool when the whole answer was read, else it closes."""
        if not self._done:
            self.close()

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    # called by the connection
    def _wait(self) -> asyncio.Future[None]:
        self._waiter = waiter = self._loop.create_future()
        return waiter

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if not self._done and self._error is None:
            self._error = error
        self._conn = None
        self._wake()


class _Connection(asyncio.Protocol):
    """One keep-alive connection; parser callbacks fill the answer in progress."""

    def __init__(self, upstream: Upstream, loop: asyncio.AbstractEventLoop) -> None:
        self.upstream, self.loop = upstream, loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
        self.head: asyncio.Future[UpstreamResponse] | None = None
        self.closed = False
        self.idle_since = 0.0
        self._received = False
        self._head_bytes = 0
        self._paused = False  # reading paused: the sink's consumer is full
        self._holding = False  # reading paused: a burst collects (BURST_S)
        self._reading = True
        self._window: asyncio.TimerHandle | None = None
        self._delivered = 0.0  # when the sink last got something (loop time)
        self._until_close = False  # the answer's body ends when the connection does (no length, not chunked)
        self.backlogged = False  # reading paused: READ_AHEAD waits unread by readany()
        self._watermark = min(READ_AHEAD, upstream.max_body)  # past it, unread bytes are looked at

    async def request(self, head: bytes, body: bytes) -> UpstreamResponse:
        transport = self.transport
        if transport is None or self.closed:
            raise UpstreamError(f"the connection to {self.upstream.label} was closed")
        self.response = UpstreamResponse(self)
        self._received, self._head_bytes, self._until_close, self._delivered = False, 0, False, 0.0
        self.head = waiter = self.loop.create_future()
        if len(body) < _COALESCE:
            transport.write(head + body)
        else:
            transport.writelines((head, body))
        try:
            return await waiter
        except BaseException:
            self.close()  # abandoned or failed: a connection with a request in flight is never reused
            raise

    def quiet(self) -> bool:
        """Nothing waits to be read on the idle socket: no end of file, no stray bytes (one ``poll``)."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None:
            return False
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | select.POLLRDHUP | select.POLLHUP | select.POLLERR)
        return not poller.poll(0)

    def resume(self) -> None:
        """Read again: the sink's consumer drained, or the answer is complete."""
        self._paused = False
        if self._window is not None:
            self._window.cancel()
            self._window = None
            self._holding = False
        self._set_reading()

    def _set_reading(self) -> None:
        want = not (self._paused or self._holding)
        if want != self._reading and self.transport is not None and not self.closed:
            self._reading = want
            if want:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    def close(self) -> None:
        if self._window is not None:
            self._window.cancel()
            self._window = None
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        self._end(UpstreamError(f"the connection to {self.upstream.label} was closed"))

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.upstream._open.add(self)

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes nobody asked for: this connection is out of step
            self.close()
            return
        self._received = True
        error = self._feed(data)  # the parser's callbacks collect the body's pieces in response._chunks
        if response._chunks:
            self._hand_over(response)
        if response._buffered > self._watermark and response._sink is None and not error:
            self._unread(response)
        if error:
            self._malformed(error)
        elif not response.status:  # still in the head: bounded, however the server splits it
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._malformed(f"its head is longer than {MAX_HEAD_BYTES} bytes")

    def _feed(self, data: bytes) -> str:
        """Parse ``data``; what is wrong with it ("" when nothing is)."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            return str(exc.__context__ or exc) or type(exc).__name__
        except httptools.HttpParserUpgrade:  # a 101 answer: another protocol follows, which this client never asked
            return "it switched protocols (101)"
        return ""

    def _hand_over(self, response: UpstreamResponse) -> None:
        """Pieces of the body arrived: wake a reader, or schedule the relay's sink."""
        if response._sink is None:
            if not response._whole:
                response._wake()  # once per read, however many chunks it held
        elif not response._flushing and not response._done:  # (at the end the relay takes them at once)
            response._flushing = True
            loop = self.loop
            if loop.time() - self._delivered < BURST_S:  # a burst: the rest collects, then goes with this
                self._holding = True
                self._set_reading()
                self._window = loop.call_later(BURST_S, self._flush, response)
            else:  # once per turn of the loop, however many reads it made
                loop.call_soon(self._deliver, response)

    def _unread(self, response: UpstreamResponse) -> None:
        """More than :data:`READ_AHEAD` of the body waits unread: a piece-by-piece reader pauses the socket until
        it read it; an answer read whole (or not read yet) fails past the upstream's ``max_body``."""
        if response._pieces and not response._whole:
            if not self.backlogged and not response._done:
                self.backlogged = True
                self.full_pause()
        elif response._buffered > self.upstream.max_body:
            self._too_large(f"more than {self.upstream.max_body} bytes")

    def _too_large(self, size: str) -> None:
        limit = self.upstream.max_body
        self._end(
            UpstreamError(
                f"{self.upstream.label} sent an answer of {size}; an answer read whole may hold at most {limit} "
                f"bytes ([server] max_answer_mb)"
            )
        )
        self.close()

    def full_pause(self) -> None:
        """Pause reading until :meth:`resume` (the reader took what waited)."""
        self._paused = True
        self._set_reading()

    def _flush(self, response: UpstreamResponse) -> None:
        """A burst's window ended: read again, and hand over what collected."""
        self._window = None
        self._holding = False
        self._set_reading()
        self._deliver(response)

    def _deliver(self, response: UpstreamResponse) -> None:
        """Hand what arrived to the relay's sink; pause reading when it says its consumer is full."""
        response._flushing = False
        chunks = response._chunks
        if not chunks or response._sink is None or response._error is not None:  # the relay took them itself
            return
        if self._paused:  # the consumer is full: the relay hands them over once it drained
            return
        self._delivered = self.loop.time()
        data = response._take()
        try:
            full = response._sink(data)  # type: ignore[misc]
        except Exception as exc:  # the sink's consumer failed (a client gone): the answer is abandoned
            response._error = exc
            response._wake()
            if not response._done:
                self.close()
            return
        if full and not response._done:
            self.full()
            response._wake()

    def full(self) -> None:
        """The sink's consumer is full: no reading until the relay drained it (then :meth:`resume`)."""
        self._paused = True
        self._set_reading()
        if self.response is not None:
            self.response._full = True

    def _malformed(self, reason: str) -> None:
        self._end(UpstreamError(f"{self.upstream.label} sent a malformed answer: {reason}"))
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        upstream = self.upstream
        upstream._open.discard(self)
        if self.response is None and self in upstream._idle:  # closed by the server while idle
            upstream._idle.remove(self)
        response = self.response
        if response is not None and self._until_close and response.status:
            self.on_message_complete()
            return
        reason = f": {exc}" if exc else ""
        if not self._received and self.head is not None:
            self._end(UpstreamError(f"{self.upstream.label} closed the connection without answering{reason}"))
        else:
            self._end(UpstreamError(f"the answer of {self.upstream.label} broke off{reason}"))

    def _end(self, error: BaseException) -> None:
        """The answer in progress (if any) fails with ``error``."""
        head, response = self.head, self.response
        self.head = self.response = None
        if head is not None and not head.done():
            head.set_exception(error)
        if response is not None:
            response._fail(error)

    # httptools callbacks (an exception here surfaces from feed_data as an HttpParserError)
    def on_message_begin(self) -> None:
        if self.response is None:  # a second answer behind the one asked for: the connection is out of step
            raise _OutOfStep("it sent more than one answer to one request")

    def on_header(self, name: bytes, value: bytes) -> None:
        response = self.response
        if response is not None:
            response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        response, parser = self.response, self.parser
        if response is None:
            return
        status = parser.get_status_code()
        if status < 200:  # 100 Continue and the like: the answer follows
            response.headers.clear()
            return
        response.status = status
        headers = response.headers
        content_type = headers.get("content-type")
        if content_type:
            response.content_type = content_type.partition(";")[0].strip().lower()
        self._until_close = (
            status not in (204, 304)
            and "content-length" not in headers
            and "chunked" not in headers.get("transfer-encoding", "")
        )
        head = self.head
        self.head = None
        if head is not None and not head.done():
            head.set_result(response)
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.upstream.max_body and response.content_type != "text/event-stream":
            # nobody reads that much whole: its head is the answer, reading its body fails at once
            self._too_large(f"{int(length)} bytes (its Content-Length)")

    def on_body(self, body: bytes) -> None:
        response = self.response
        if response is not None and response.status:
            response._chunks.append(body)
            response._buffered += len(body)

    def on_message_complete(self) -> None:
        response = self.response
        if response is None or not response.status:  # the end of an informational answer
            return
        self.response = None
        response._done = True
        response._conn = None
        response._wake()
        if not self.closed and not self._until_close and self.parser.should_keep_alive():
            self.resume()
            self.upstream._idle_again(self)
        elif not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
