"""``POST /v1/messages`` and ``/v1/messages/count_tokens``: the Anthropic API over OpenAI-speaking engines.

The request is validated and translated to an OpenAI chat request, routed like any other (cold loads,
failover, metrics), and the answer translated back — whole, or event by event for streams, with a ``ping``
after ``message_start`` and whenever the engine is silent (``helexa.gateway.translation``). Errors are rendered in
Anthropic's envelope by the error middleware (it knows ``/v1/messages`` routes); a failure after the stream
started becomes an ``event: error``.
"""

from __future__ import annotations

import time

import msgspec
from aiohttp import web

from helexa.gateway.forward import forward, gateway_metrics_key, lifecycle_key, observe
from helexa.gateway.neuron_client import error_from_response
from helexa.gateway.proxy import Exchange, Usage, read_body
from helexa.gateway.translation import relay_translated
from helexa.server.app import json_response
from helexa.translate.anthropic import (
    chat_messages,
    chat_tools,
    decode_count_request,
    decode_request,
    to_anthropic_message,
    to_chat_request,
)
from helexa.translate.anthropic_stream import AnthropicStream, event

__all__ = ["count_tokens", "messages", "setup_anthropic_routes"]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()
_PING = event("ping", {})


async def messages(request: web.Request) -> web.StreamResponse:
    """``POST /v1/messages``."""
    exchange = Exchange(started=time.perf_counter())
    anthropic_request = decode_request(await request.read())
    model_id, state = await request.app[lifecycle_key].route(anthropic_request.model)
    body = _encoder.encode(to_chat_request(anthropic_request, model_id))
    async with forward(request, model_id, state, path="/v1/chat/completions", body=body, exchange=exchange) as (
        upstream,
        state,
    ):
        if upstream.status != 200:
            raise error_from_response("engine", upstream.status, await read_body(upstream))
        if anthropic_request.stream:
            translator = AnthropicStream(anthropic_request.model, anthropic_request.stop_sequences)
            response = await relay_translated(request, upstream, translator, exchange, keepalive=_PING)
        else:
            chat = _decoder.decode(await read_body(upstream))
            usage = chat.get("usage") or {}
            exchange.usage = Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
            response = json_response(to_anthropic_message(chat, anthropic_request, anthropic_request.model))
    observe(request.app[gateway_metrics_key], model_id, state.name, exchange)
    return response


async def count_tokens(request: web.Request) -> web.Response:
    """``POST /v1/messages/count_tokens``: ``{"input_tokens": n}`` from the model's own tokenizer."""
    count_request = decode_count_request(await request.read())
    lifecycle = request.app[lifecycle_key]
    model_id, state = await lifecycle.route(count_request.model)
    client = lifecycle.clients[state.name]
    messages_ = chat_messages(count_request.system, count_request.messages)
    count = await client.count_tokens(model_id, messages_, chat_tools(count_request.tools))
    return json_response({"input_tokens": count})


def setup_anthropic_routes(app: web.Application) -> None:
    """Attach the Anthropic routes to ``app``."""
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
