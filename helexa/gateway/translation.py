"""Running a dialect translator over a neuron's chat completion stream (Anthropic, Responses).

A translator turns OpenAI chat chunks into another API's events: ``start()`` before the first chunk,
``chunk(dict)`` per chunk, ``finish()`` at the end. This module does the I/O around it — whole SSE events
only, the scan for first-token time and usage (metrics), a keep-alive event while the engine is silent, and
a neuron's own mid-stream error event turned into an error the middleware renders in the dialect.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp
import msgspec
from aiohttp import web

from helexa.errors import UpstreamError
from helexa.gateway.forward import forward, gateway_metrics_key, lifecycle_key, observe
from helexa.gateway.neuron_client import error_from_response
from helexa.gateway.proxy import Exchange, StreamScanner, Usage, read_body
from helexa.server.app import json_response
from helexa.sse import EventFramer

__all__ = ["KEEPALIVE_INTERVAL_S", "Translator", "relay_translated", "serve_translated"]

KEEPALIVE_INTERVAL_S = 10.0
_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


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
        scanner.report(exchange)
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


async def serve_translated(
    request: web.Request,
    *,
    model: str,
    chat_request: Callable[[str], dict[str, Any]],
    stream: Callable[[], Translator] | None,
    whole: Callable[[dict[str, Any]], dict[str, Any]],
    keepalive: bytes = b"",
) -> web.StreamResponse:
    """Serve a request of another dialect: route ``model``, send ``chat_request(model_id)`` as a chat
    completion, and answer with ``stream()``'s events (when streaming) or ``whole(chat)`` (when not).

    Routing, cold loads, failover and metrics are the same as for plain OpenAI requests. An engine's error
    answer is re-raised with its status, so the middleware renders it in the dialect's envelope.
    """
    exchange = Exchange(started=time.perf_counter())
    model_id, state = await request.app[lifecycle_key].route(model)
    body = _encoder.encode(chat_request(model_id))
    async with forward(request, model_id, state, path="/v1/chat/completions", body=body, exchange=exchange) as (
        upstream,
        state,
    ):
        if upstream.status != 200:
            raise error_from_response("engine", upstream.status, await read_body(upstream))
        if stream is not None:
            response = await relay_translated(request, upstream, stream(), exchange, keepalive=keepalive)
        else:
            chat = _decoder.decode(await read_body(upstream))
            usage = chat.get("usage") or {}
            exchange.usage = Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
            response = json_response(whole(chat))
    observe(request.app[gateway_metrics_key], model_id, state.name, exchange)
    return response
