"""OpenAI pass-through from the neuron to a model's engine: bytes in, bytes out, streams unbuffered.

The request body is decoded only for ``model`` and ``stream`` and forwarded as the client sent it. Streams
are relayed chunk by chunk as they arrive; chat completions go through the normaliser when the model has it
on (events without markers still leave as the engine's own bytes). A client that disconnects cancels the
handler, which closes the upstream connection, which makes the engine abort the request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import aiohttp
import msgspec
from aiohttp import web

from helexa.errors import ContextLengthExceeded, UpstreamError, openai_type_for_status
from helexa.neuron.engine_errors import EngineRefusal, RefusalKind, classify
from helexa.neuron.normaliser import ChatNormaliser, Markers, SSENormaliser
from helexa.server.upstream import open_upstream, read_capped, response_headers
from helexa.sse import EventFramer

__all__ = ["relay"]

logger = logging.getLogger(__name__)


async def relay(
    request: web.Request,
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    normalise: bool,
    markers: Markers,
    offered: frozenset[str] = frozenset(),
    fallback: bytes | None = None,
    on_fallback: Callable[[], None] | None = None,
    max_answer: int = 64 * 1024 * 1024,
) -> web.StreamResponse:
    """POST ``body`` to ``url`` and relay the answer to the client.

    :param offered: tool names the request offered (the normaliser's bare-JSON tool calls).
    :param max_answer: the most of an answer that is read whole (a larger one is a 502).
    :param fallback: a body to send instead when the engine's chat template refuses ``body`` (a system message
        after the first turn; then ``on_fallback()`` is called, before anything reached the client). Any other
        error is the answer, the fallback unused.
    :raises ContextLengthExceeded: the prompt does not fit the model's context (in every engine's words).
    :raises UpstreamError: the engine could not be reached, or broke off mid-stream (then, the client gets a
        final SSE error event from the error middleware).
    """
    headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
    upstream = await open_upstream(session, url, body, headers)
    if _refused(upstream):
        answer, refusal = await _read_refusal(upstream, max_answer)
        if fallback is None or refusal.kind != RefusalKind.TEMPLATE_REFUSAL:
            return _error_answer(upstream, answer, refusal)
        logger.warning(
            "engine at %s refused system messages after the first turn (%d: %s); merging them from now on",
            url,
            upstream.status,
            refusal.message[:300],
        )
        if on_fallback is not None:
            on_fallback()
        upstream = await open_upstream(session, url, fallback, headers)
        if _refused(upstream):
            return _error_answer(upstream, *await _read_refusal(upstream, max_answer))
    async with upstream:
        return await _forward(
            request, upstream, normalise=normalise, markers=markers, offered=offered, max_answer=max_answer
        )


def _refused(upstream: aiohttp.ClientResponse) -> bool:
    """The engine answered with an error (not a stream that carries one)."""
    return upstream.status >= 400 and upstream.content_type != "text/event-stream"


async def _read_refusal(upstream: aiohttp.ClientResponse, limit: int) -> tuple[bytes, EngineRefusal]:
    async with upstream:
        try:
            answer = await read_capped(upstream, limit, "the engine")
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise UpstreamError(f"engine response broke off: {exc}") from None
    return answer, classify(upstream.status, answer)


def _error_answer(upstream: aiohttp.ClientResponse, data: bytes, refusal: EngineRefusal) -> web.Response:
    """An engine's error answer: a context overflow in the words every client knows, anything else as the
    engine said it (a non-JSON one in the OpenAI envelope, its words kept).

    :raises ContextLengthExceeded: the prompt does not fit.
    """
    if refusal.kind == RefusalKind.CONTEXT_OVERFLOW:
        raise ContextLengthExceeded(refusal.prompt_tokens, refusal.context, refusal.message)
    headers = response_headers(upstream, origin="engine")
    if upstream.content_type != "application/json":
        data = _engine_error(upstream.status, data)  # llama.cpp's "404: Not Found" is text/plain
        headers["Content-Type"] = "application/json"
    return web.Response(status=upstream.status, body=data, headers=headers)


async def _forward(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    *,
    normalise: bool,
    markers: Markers,
    offered: frozenset[str],
    max_answer: int,
) -> web.StreamResponse:
    out_headers = response_headers(upstream, origin="engine")
    if upstream.content_type != "text/event-stream":
        if upstream.content_type != "application/json":
            raise UpstreamError(f"the engine answered with {upstream.content_type[:60]}, not JSON or a stream")
        try:
            data = await read_capped(upstream, max_answer, "the engine")
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise UpstreamError(f"engine response broke off: {exc}") from None
        if normalise and upstream.status == 200:
            data = _normalise_body(data, markers, offered)
        return web.Response(status=upstream.status, body=data, headers=out_headers)
    response = web.StreamResponse(status=upstream.status, headers=out_headers)
    response.headers["Cache-Control"] = "no-cache"
    await response.prepare(request)
    stream: SSENormaliser | EventFramer = SSENormaliser(markers, offered) if normalise else EventFramer()
    try:
        async for chunk in upstream.content.iter_any():
            out = stream.feed(chunk)
            if out:
                await response.write(out)
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
        raise UpstreamError(f"engine stream broke off: {exc}") from None
    tail = stream.close()
    if tail:
        await response.write(tail)
    await response.write_eof()
    return response


def _engine_error(status: int, data: bytes) -> bytes:
    """An engine's non-JSON error answer in the OpenAI envelope (its status and words kept)."""
    text = data.decode(errors="replace").strip()[:1000] or f"HTTP {status}"
    error = {
        "message": f"engine: {text}",
        "type": openai_type_for_status(status),
        "param": None,
        "code": "engine_error",
    }
    return msgspec.json.encode({"error": error})


def _normalise_body(data: bytes, markers: Markers, offered: frozenset[str]) -> bytes:
    try:
        body = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return data
    if not isinstance(body, dict) or body.get("object") != "chat.completion":
        return data
    return msgspec.json.encode(ChatNormaliser(markers, offered).completion(body))
