"""Running a dialect translator over a neuron's chat completion stream (Anthropic, Responses).

A translator turns OpenAI chat chunks into another API's events: ``start()`` before the first chunk,
``chunk(dict)`` per chunk, ``finish()`` at the end. This module does the I/O around it — whole SSE events
only, the scan for first-token time and usage (metrics), a keep-alive event while the engine is silent, and
a neuron's own mid-stream error event turned into an error the middleware renders in the dialect.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

import aiohttp
import msgspec
from aiohttp import web

from helexa.errors import UpstreamError
from helexa.gateway.proxy import Exchange, StreamScanner
from helexa.sse import EventFramer

__all__ = ["KEEPALIVE_INTERVAL_S", "Translator", "relay_translated"]

KEEPALIVE_INTERVAL_S = 10.0
_decoder = msgspec.json.Decoder()


class Translator(Protocol):
    """Chat chunks in, another API's encoded events out."""

    def start(self) -> bytes:
        """Events that open the response."""
        ...

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        """Events for one chat completion chunk."""
        ...

    def finish(self) -> bytes:
        """Events that close the response."""
        ...


async def relay_translated(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    translator: Translator,
    exchange: Exchange,
    *,
    keepalive: bytes = b"",
) -> web.StreamResponse:
    """Stream ``upstream`` (chat completion chunks) to the client through ``translator``.

    :param keepalive: an event sent after the opening events and whenever the engine is silent for
        :data:`KEEPALIVE_INTERVAL_S` (Anthropic's ``ping``); empty = none.
    :raises UpstreamError: the stream broke off or the neuron reported an error mid-stream.
    """
    exchange.streamed = True
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    await response.write(translator.start() + keepalive)
    framer, scanner = EventFramer(), StreamScanner(started=exchange.started)
    try:
        while True:
            try:
                async with asyncio.timeout(KEEPALIVE_INTERVAL_S if keepalive else None):
                    data = await upstream.content.readany()
            except TimeoutError:
                await response.write(keepalive)
                continue
            if not data:
                break
            events = framer.feed(data)
            if events:
                scanner.scan(events)
                out = b"".join(_translate(translator, e) for e in events.split(b"\n\n")[:-1])
                if out:
                    await response.write(out)
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
        if isinstance(exc, ConnectionResetError):
            raise
        raise UpstreamError(f"neuron stream broke off: {exc}") from None
    finally:
        if scanner.first_token:
            exchange.first_token_s = scanner.first_token - scanner.started
            exchange.generation_s = time.perf_counter() - scanner.first_token
        exchange.usage = scanner.usage
    await response.write(translator.finish())
    await response.write_eof()
    return response


def _translate(translator: Translator, raw: bytes) -> bytes:
    if not raw.startswith(b"data:"):
        return b""
    payload = raw[5:].strip()
    if payload == b"[DONE]":
        return b""
    try:
        chunk: Any = _decoder.decode(payload)
    except msgspec.DecodeError:
        return b""
    if not isinstance(chunk, dict):
        return b""
    if "error" in chunk and not chunk.get("choices"):  # the neuron's own final error event
        error = chunk["error"] if isinstance(chunk["error"], dict) else {}
        raise UpstreamError(str(error.get("message") or "the engine reported an error mid-stream"))
    return translator.chunk(chunk)
