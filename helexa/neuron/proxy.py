"""OpenAI pass-through from the neuron to a model's engine: bytes in, bytes out, streams unbuffered.

The request body is decoded only for ``model`` and ``stream`` and forwarded as the client sent it. Streams
are relayed chunk by chunk as they arrive; chat completions go through the normaliser when the model has it
on (events without markers still leave as the engine's own bytes). A client that disconnects cancels the
handler, which closes the upstream connection, which makes the engine abort the request.
"""

from __future__ import annotations

import logging

import aiohttp
import msgspec
from aiohttp import web

from helexa.errors import InvalidRequest, UpstreamError
from helexa.neuron.normaliser import ChatNormaliser, Markers, SSENormaliser
from helexa.server.middlewares import ORIGIN_HEADER
from helexa.sse import EventFramer
from helexa.wire import WireStruct

__all__ = ["STALE_RETRIES", "InferenceHead", "decode_head", "open_upstream", "relay"]

logger = logging.getLogger(__name__)
STALE_RETRIES = 2
_HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding", "server", "date"}


class InferenceHead(WireStruct):
    """The only fields of an inference request the neuron and gateway read."""

    model: str = ""
    stream: bool = False


_head_decoder = msgspec.json.Decoder(InferenceHead)


def decode_head(body: bytes) -> InferenceHead:
    """Read ``model`` and ``stream`` from a request body. :raises InvalidRequest: not JSON, or no model."""
    if not body:
        raise InvalidRequest("request body is empty; send a JSON object with 'model'")
    try:
        head = _head_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"invalid request: {exc}", param=_param_of(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not head.model:
        raise InvalidRequest("'model' is required", param="model")
    return head


def _param_of(message: str) -> str | None:
    _, sep, path = message.partition("at `$.")
    return path.rstrip("`") if sep else None


async def relay(
    request: web.Request,
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    normalise: bool,
    markers: Markers,
) -> web.StreamResponse:
    """POST ``body`` to ``url`` and relay the answer to the client.

    :raises UpstreamError: the engine could not be reached, or broke off mid-stream (then, the client gets a
        final SSE error event from the error middleware).
    """
    headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
    upstream = await open_upstream(session, url, body, headers)
    async with upstream:
        return await _forward(request, upstream, normalise=normalise, markers=markers)


async def open_upstream(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> aiohttp.ClientResponse:
    """POST and wait for the response head.

    A pooled keep-alive connection the engine has already closed fails before any response; that is retried
    (the engine never saw the request), up to :data:`STALE_RETRIES` times.

    :raises UpstreamError: the engine cannot be reached.
    """
    for attempt in range(STALE_RETRIES + 1):
        try:
            return await session.post(url, data=body, headers=headers)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            if isinstance(exc, aiohttp.ClientConnectorError) or attempt == STALE_RETRIES:
                raise UpstreamError(f"engine at {url} is not reachable: {exc}") from None
            logger.debug("stale connection to %s (%s); retrying", url, exc)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise UpstreamError(f"engine at {url} is not reachable: {exc}") from None
    raise AssertionError("unreachable")


async def _forward(
    request: web.Request, upstream: aiohttp.ClientResponse, *, normalise: bool, markers: Markers
) -> web.StreamResponse:
    out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
    out_headers[ORIGIN_HEADER] = "engine"
    if upstream.content_type != "text/event-stream":
        try:
            data = await upstream.read()
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise UpstreamError(f"engine response broke off: {exc}") from None
        if normalise and upstream.status == 200 and upstream.content_type == "application/json":
            data = _normalise_body(data, markers)
        return web.Response(status=upstream.status, body=data, headers=out_headers)
    response = web.StreamResponse(status=upstream.status, headers=out_headers)
    response.headers["Cache-Control"] = "no-cache"
    await response.prepare(request)
    stream: SSENormaliser | EventFramer = SSENormaliser(markers) if normalise else EventFramer()
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


def _normalise_body(data: bytes, markers: Markers) -> bytes:
    try:
        body = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return data
    if not isinstance(body, dict) or body.get("object") != "chat.completion":
        return data
    return msgspec.json.encode(ChatNormaliser(markers).completion(body))
