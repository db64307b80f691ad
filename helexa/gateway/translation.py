"""Running a dialect translator over a neuron's chat completion stream (Anthropic, Responses).

A translator turns OpenAI chat chunks into another API's events: ``start()`` before the first chunk,
``chunk(dict)`` per chunk, ``finish()`` at the end. This module does the I/O around it — the stream opened at
once, whole SSE events only, the scan for first-token time and usage (metrics), a keep-alive event while
the gateway or the engine is silent, and a neuron's own mid-stream error event turned into an error the
middleware renders in the dialect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import msgspec
from aiohttp import web

from helexa.errors import HelexaError, UpstreamError
from helexa.gateway.affinity import Conversation
from helexa.gateway.forward import Caller, Forward, observe
from helexa.gateway.keepalive import open_event_stream
from helexa.gateway.neuron_client import error_from_response
from helexa.gateway.proxy import Exchange, StreamScanner, Usage, stream_breaks
from helexa.gateway.queue import client_of
from helexa.gateway.registry import NeuronState
from helexa.gateway.state import keepalives_key, router_key
from helexa.server.app import json_response
from helexa.server.h1client import UpstreamResponse
from helexa.server.middlewares import sse_error_key
from helexa.sse import EventFramer, event_data

__all__ = [
    "IGNORED_TOOLS_HEADER",
    "Translator",
    "answer_translated",
    "ignored_tools_note",
    "relay_translated",
    "serve_translated",
]

logger = logging.getLogger(__name__)
IGNORED_TOOLS_HEADER = "x-helexa-ignored-tools"
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


def ignored_tools_note(request: web.Request, model: str, dropped: list[str]) -> dict[str, str]:
    """Log the tools left out of a request (hosted/server tools the fleet cannot run) and return the response
    header that tells the client: ``x-helexa-ignored-tools: web_search, …``."""
    if not dropped:
        return {}
    names = ", ".join(sorted(set(dropped)))
    logger.warning("%s for model %s: left out tools the fleet cannot run: %s", request.path, model, names)
    return {IGNORED_TOOLS_HEADER: names}


async def relay_translated(
    response: web.StreamResponse,
    upstream: UpstreamResponse,
    translator: Translator,
    exchange: Exchange,
    *,
    keepalive: bytes = b"",
    interval: float = 10.0,
) -> web.StreamResponse:
    """Stream ``upstream`` (chat completion chunks) through ``translator`` into the open ``response``.

    :param keepalive: an event sent whenever the engine is silent for ``interval`` seconds (Anthropic's
        ``ping``); empty = none.
    :raises UpstreamError: the stream broke off or the neuron reported an error mid-stream.
    """
    framer, scanner = EventFramer(), StreamScanner(started=exchange.started)
    try:
        with stream_breaks():
            while True:
                try:
                    async with asyncio.timeout(interval if keepalive else None):
                        data = await upstream.readany()
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
    finally:
        scanner.report(exchange)
    await response.write(translator.finish())
    await response.write_eof()
    return response


def _translate(translator: Translator, raw: bytes) -> bytes:
    payload = event_data(raw)
    if payload is None:
        return b""
    payload = payload.strip()
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
    try:
        return translator.chunk(chunk)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:  # a neuron's odd shapes
        raise UpstreamError(f"a chunk of the neuron's stream could not be translated: {exc!r}"[:300]) from None


async def serve_translated(
    request: web.Request,
    *,
    model: str,
    chat_request: Callable[[str], dict[str, Any]],
    stream: Callable[[], Translator] | None,
    whole: Callable[[dict[str, Any]], dict[str, Any]],
    keepalive: bytes = b"",
    error_event: Callable[[HelexaError, Translator], bytes] | None = None,
    headers: dict[str, str] | None = None,
    conversation: Conversation | None = None,
) -> web.StreamResponse:
    """Serve a request of another dialect: route ``model``, send ``chat_request(model_id)`` as a chat
    completion, and answer with ``stream()``'s events (when streaming) or ``whole(chat)`` (when not).

    Routing, cold loads, failover and metrics are the same as for plain OpenAI requests. A stream opens at
    once (after the model is known to exist) with the translator's opening events, then ``keepalive`` while
    the gateway waits for the engine; a failure after that is ``error_event(err, translator)`` (default: the
    middleware's). Before that, an engine's error answer is re-raised with its status, so the middleware
    renders it in the dialect's envelope. ``headers`` go on the response (notes for the client);
    ``conversation`` names the conversation for prefix affinity.
    """
    if stream is None:
        answer, _ = await answer_translated(
            request, model=model, chat_request=chat_request, whole=whole, conversation=conversation
        )
        return json_response(answer, headers=headers)
    exchange = Exchange(started=time.perf_counter())
    router = request.app[router_key]
    await router.check(model)
    translator = stream()
    if error_event is not None:
        request[sse_error_key] = lambda err: error_event(err, translator)
    response = await open_event_stream(request, headers)
    exchange.streamed = True
    await response.write(translator.start() + keepalive)
    keepalives = request.app[keepalives_key]
    interval = keepalives.interval
    async with keepalives.waiting(response, keepalive) as waiting:
        model_id, state = await router.route(model, conversation, client_of(request))
        async with _open(request, model_id, state, chat_request, exchange, conversation=conversation) as (
            upstream,
            state,
        ):
            await waiting.stop()
            await relay_translated(response, upstream, translator, exchange, keepalive=keepalive, interval=interval)
    observe(request, model_id, state.name, exchange)
    return response


async def answer_translated(
    caller: Caller,
    *,
    model: str,
    chat_request: Callable[[str], dict[str, Any]],
    whole: Callable[[dict[str, Any]], dict[str, Any]],
    conversation: Conversation | None = None,
) -> tuple[dict[str, Any], Exchange]:
    """A whole answer of another dialect, for an HTTP request or a batch's line: route ``model``, send
    ``chat_request(model_id)`` as a chat completion, and return ``whole(chat)`` and the exchange (its usage).

    :raises HelexaError: as the route would answer it (an engine's error answer with its status; an answer that
        cannot be translated is an :class:`UpstreamError`).
    """
    exchange = Exchange(started=time.perf_counter())
    model_id, state = await caller.app[router_key].route(model, conversation, client_of(caller))
    async with _open(caller, model_id, state, chat_request, exchange, conversation=conversation) as (upstream, state):
        data = await upstream.read()
        exchange.usage = _usage(data)
        try:
            answer = whole(_whole_chat(data))
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:  # a neuron's odd shapes
            raise UpstreamError(f"the neuron's chat completion could not be translated: {exc!r}"[:300]) from None
    observe(caller, model_id, state.name, exchange)
    return answer, exchange


class _UsageOf(msgspec.Struct):
    usage: Usage | None = None


_usage_of = msgspec.json.Decoder(_UsageOf)


def _usage(data: bytes) -> Usage | None:
    """A whole answer's usage, when it carries a well-formed one."""
    try:
        return _usage_of.decode(data).usage
    except msgspec.DecodeError:
        return None


def _whole_chat(data: bytes) -> dict[str, Any]:
    """A neuron's whole chat completion. :raises UpstreamError: it is not a JSON object."""
    try:
        chat = _decoder.decode(data)
    except msgspec.DecodeError:
        chat = None
    if not isinstance(chat, dict):
        raise UpstreamError("the neuron answered with something that is not a chat completion")
    return chat


@contextlib.asynccontextmanager
async def _open(
    request: Caller,
    model_id: str,
    state: NeuronState,
    chat_request: Callable[[str], dict[str, Any]],
    exchange: Exchange,
    *,
    conversation: Conversation | None,
) -> AsyncIterator[tuple[UpstreamResponse, NeuronState]]:
    body = _encoder.encode(chat_request(model_id))
    path = "/v1/chat/completions"
    async with Forward(
        request, model_id, state, path=path, body=body, exchange=exchange, conversation=conversation
    ) as opened:
        upstream = opened[0]
        if upstream.status != 200:
            raise error_from_response("engine", upstream.status, await upstream.read())
        yield opened
