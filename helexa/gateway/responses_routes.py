"""``POST /v1/responses``: the OpenAI Responses API (stateless) over chat-completion engines."""

from __future__ import annotations

import time

import msgspec
from aiohttp import web

from helexa.gateway.forward import forward, gateway_metrics_key, lifecycle_key, observe
from helexa.gateway.neuron_client import error_from_response
from helexa.gateway.proxy import Exchange, Usage, read_body
from helexa.gateway.translation import relay_translated
from helexa.server.app import json_response
from helexa.translate.responses import ResponsesStream, decode_responses_request, to_chat_request, to_response

__all__ = ["responses", "setup_responses_routes"]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


async def responses(request: web.Request) -> web.StreamResponse:
    """``POST /v1/responses``: translate to chat, route, translate the answer back (whole or streamed)."""
    exchange = Exchange(started=time.perf_counter())
    responses_request = decode_responses_request(await request.read())
    model_id, state = await request.app[lifecycle_key].route(responses_request.model)
    body = _encoder.encode(to_chat_request(responses_request, model_id))
    async with forward(request, model_id, state, path="/v1/chat/completions", body=body, exchange=exchange) as (
        upstream,
        state,
    ):
        if upstream.status != 200:
            raise error_from_response("engine", upstream.status, await read_body(upstream))
        if responses_request.stream:
            translator = ResponsesStream(responses_request, responses_request.model)
            response = await relay_translated(request, upstream, translator, exchange)
        else:
            chat = _decoder.decode(await read_body(upstream))
            usage = chat.get("usage") or {}
            exchange.usage = Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
            response = json_response(to_response(chat, responses_request, responses_request.model))
    observe(request.app[gateway_metrics_key], model_id, state.name, exchange)
    return response


def setup_responses_routes(app: web.Application) -> None:
    """Attach ``/v1/responses`` to ``app``."""
    app.router.add_post("/v1/responses", responses)
