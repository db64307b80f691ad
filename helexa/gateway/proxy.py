"""The gateway's pass-through to a neuron: original bytes out, streamed bytes back, metrics on the side.

The request body is re-encoded only when it must change: an alias becomes the canonical id, and a streaming
chat/completion request that did not ask for usage gets ``stream_options.include_usage`` so token metrics
work — the usage-only chunk this adds is removed again, so the client sees what it asked for. Streams are
relayed event by event as they arrive and scanned (never re-serialised) for the first token and the usage.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from helexa.errors import UpstreamError
from helexa.gateway.neuron_client import error_from_response
from helexa.server.bodywriter import BodyWriter
from helexa.server.h1client import UpstreamResponse
from helexa.server.upstream import response_headers
from helexa.sse import EventFramer, event_data
from helexa.wire.openai import StreamOptions

__all__ = ["Exchange", "StreamScanner", "Usage", "prepare_body", "relay", "relay_stream", "stream_breaks", "usage_of"]

logger = logging.getLogger(__name__)
_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
# A chunk that carries generated text (OpenAI chat and completions): a non-empty string in one of these.
_TOKEN = re.compile(rb'"(?:content|reasoning_content|text|arguments|name)":\s*"[^"]')
_USAGE = re.compile(rb'"usage":\s*\{')
_INCLUDE_USAGE = b'"stream_options":{"include_usage":true},'


class Usage(msgspec.Struct):
    """Token counts of one response."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


class _WithUsage(msgspec.Struct):
    usage: Usage | None = None
    choices: list[Any] | None = None


class _UsageOnly(msgspec.Struct):
    usage: Usage | None = None


_usage_decoder = msgspec.json.Decoder(_WithUsage)
_usage_only = msgspec.json.Decoder(_UsageOnly)  # a whole answer: its choices are skipped, never built


def usage_of(answer: bytes) -> Usage | None:
    """The ``usage`` of a whole JSON answer (``None``: it has none, or is not JSON)."""
    if b'"usage"' not in answer:
        return None
    try:
        return _usage_only.decode(answer).usage
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def prepare_body(
    body: bytes,
    head_model: str,
    model_id: str,
    *,
    stream: bool,
    wants_usage: bool,
    stream_options: StreamOptions | msgspec.UnsetType | None = msgspec.UNSET,
) -> tuple[bytes, bool]:
    """The body to send upstream and whether usage was injected (and must be hidden again).

    ``stream_options`` is the request's own, as its head decoded it (``UNSET`` when absent; a key spelled with
    JSON escapes included): what the body holds is decided from the decoded key, never from its bytes.
    Untouched (the same bytes object) when no alias is rewritten and no usage is injected; a body without
    ``stream_options`` gets the key in front, without being parsed again.
    """
    rewrite = head_model != model_id
    asked = isinstance(stream_options, StreamOptions) and stream_options.include_usage
    inject = stream and wants_usage and not asked
    if not rewrite and not inject:
        return body, False
    if not rewrite and stream_options is msgspec.UNSET:  # the common case: one key in front, no second parse
        start = body.find(b"{")  # an object with a model (the head was decoded): never empty
        return body[: start + 1] + _INCLUDE_USAGE + body[start + 1 :], True
    data = _decoder.decode(body)
    if rewrite:
        data["model"] = model_id
    injected = False
    if inject:
        options = data.get("stream_options") or {}
        if not options.get("include_usage"):
            data["stream_options"] = {**options, "include_usage": True}
            injected = True
    if not rewrite and not injected:
        return body, False
    return _encoder.encode(data), injected


@dataclass
class StreamScanner:
    """Scans whole SSE events for the first generated token and the final usage."""

    hide_usage: bool = False
    started: float = field(default_factory=time.perf_counter)  # when the request arrived
    first_token: float = 0.0
    usage: Usage | None = None
    events: int = 0

    def scan(self, events: bytes) -> bytes:
        """Note what ``events`` (one or more whole events) say; return what the client should get."""
        self.events += events.count(b"\n\n")
        if not self.first_token and _has_token(events):
            self.first_token = time.perf_counter()
        if b'"usage"' not in events:
            return events
        out = [self._usage_event(event) for event in events.split(b"\n\n")[:-1]]
        return b"".join(e + b"\n\n" for e in out if e)

    def report(self, exchange: Exchange) -> None:
        """Copy what the stream showed (first-token time, generation time, usage) into ``exchange``."""
        if self.first_token:
            exchange.first_token_s = self.first_token - self.started
            exchange.generation_s = time.perf_counter() - self.first_token
        exchange.usage = self.usage
        exchange.events = self.events

    def _usage_event(self, event: bytes) -> bytes:
        """Record the usage an event carries; drop or strip it when we injected the request for it."""
        data = event_data(event + b"\n\n") if _USAGE.search(event) else None
        chunk = _decode_usage(data) if data is not None else None
        if chunk is None or chunk.usage is None:
            return event
        self.usage = chunk.usage
        if not self.hide_usage:
            return event
        if not chunk.choices:
            return b""  # the usage-only chunk we asked for and the client did not
        full = _decoder.decode(data)
        full.pop("usage", None)
        return b"data: " + _encoder.encode(full)


def _decode_usage(data: bytes) -> _WithUsage | None:
    try:
        return _usage_decoder.decode(data)
    except msgspec.DecodeError:
        return None


def _has_token(events: bytes) -> bool:
    return _TOKEN.search(events) is not None


@dataclass
class Exchange:
    """What one relayed request produced, for metrics. ``started``: when the request arrived."""

    started: float = field(default_factory=time.perf_counter)
    status: int = 0
    first_token_s: float = 0.0
    generation_s: float = 0.0
    usage: Usage | None = None
    streamed: bool = False
    bytes_sent: int = 0
    events: int = 0  # stream events seen (about one token each)

    def tokens_used(self, body_bytes: int) -> int:
        """Tokens to charge a key for this request: the engine's usage when it was seen; else, for an answer
        that began (a stream the client cut before its usage event), an estimate — a token per 4 bytes of the
        request and one per streamed event — so hanging up never makes a request free."""
        if self.usage is not None:
            return self.usage.prompt_tokens + self.usage.completion_tokens
        return body_bytes // 4 + self.events if self.status == 200 else 0


async def relay(
    request: web.Request, upstream: UpstreamResponse, *, hide_usage: bool, exchange: Exchange
) -> web.StreamResponse:
    """Relay an open neuron response to the client, filling ``exchange``.

    :raises UpstreamError: the answer broke off (a stream's client then gets a final SSE error event from the
        error middleware).
    """
    out_headers = response_headers(upstream, origin="neuron")
    if upstream.content_type == "text/event-stream":
        response = web.StreamResponse(status=upstream.status, headers=out_headers)
        await response.prepare(request)
        return await relay_stream(request, response, upstream, hide_usage=hide_usage, exchange=exchange)
    data = await upstream.read()
    if upstream.content_type != "application/json":  # only JSON and event streams are relayed, nothing a browser runs
        if upstream.status >= 400:
            raise error_from_response(upstream.label, upstream.status, data)
        raise UpstreamError(f"{upstream.label} answered with {upstream.content_type[:60]!r}, not JSON or a stream")
    if upstream.status == 200:
        exchange.usage = usage_of(data)
    exchange.bytes_sent = len(data)
    return web.Response(status=upstream.status, body=data, headers=out_headers)


@contextlib.contextmanager
def stream_breaks() -> Iterator[None]:
    """Around reading a neuron's stream: an event that never ends (:class:`~helexa.sse.EventTooLarge`, a payload
    error) becomes :class:`UpstreamError`, as the relay client's own errors already are, which ends the client's
    stream with its final error event; the client's side going away (``ConnectionResetError`` on a write) passes
    through as it is."""
    try:
        yield
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
        if isinstance(exc, ConnectionResetError):
            raise
        raise UpstreamError(f"neuron stream broke off: {exc}") from None


async def relay_stream(
    request: web.Request,
    response: web.StreamResponse,
    upstream: UpstreamResponse,
    *,
    hide_usage: bool,
    exchange: Exchange,
) -> web.StreamResponse:
    """Relay an open neuron response into ``response``, an event stream the client (``request``) already has open.

    Each piece of the neuron's stream is framed, scanned and written to the client from the neuron connection's
    socket callback (:meth:`UpstreamResponse.relay`, :class:`BodyWriter`): nothing per chunk but the relay, and
    no task switch; a client that reads slowly pauses the reading from the neuron.

    :raises UpstreamError: the neuron answered with an error or not with a stream, or the stream broke off
        (the client gets a final SSE error event from the error middleware).
    """
    exchange.streamed = True
    if upstream.status != 200 or upstream.content_type != "text/event-stream":
        data = await upstream.read()
        if upstream.status == 200:
            raise UpstreamError(
                f"{upstream.label} answered a streaming request with {upstream.content_type[:60]!r}, not a stream"
            )
        raise error_from_response("engine", upstream.status, data)
    framer, scanner = EventFramer(), StreamScanner(hide_usage=hide_usage, started=exchange.started)
    body = BodyWriter(request, response)
    feed, scan, write = framer.feed, scanner.scan, body.write

    def sink(chunk: bytes) -> bool:
        events = feed(chunk)
        if events:
            out = scan(events)
            if out:
                return write(out)
        return False

    try:
        with stream_breaks():
            await upstream.relay(sink, body.drain)
    finally:
        exchange.bytes_sent += body.sent
        scanner.report(exchange)
    tail = framer.close()
    if tail:
        await response.write(tail)
    await response.write_eof()
    return response
