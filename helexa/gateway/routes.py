"""The gateway's HTTP handlers: OpenAI inference routes, the merged model list, fleet and admin."""

from __future__ import annotations

import time

from aiohttp import web

from helexa.errors import NotFound
from helexa.gateway.affinity import Conversation
from helexa.gateway.catalogue import fleet_report, model_cards
from helexa.gateway.forward import Forward, observe, reserve_tokens
from helexa.gateway.keepalive import OPENAI_KEEPALIVE, open_event_stream
from helexa.gateway.proxy import Exchange, prepare_body, relay, relay_stream
from helexa.gateway.queue import client_of
from helexa.gateway.routing import first_round
from helexa.gateway.state import keepalives_key, lifecycle_key, peers_key, router_key
from helexa.server.app import json_response
from helexa.server.body import read_body
from helexa.wire.openai import decode_head

__all__ = ["setup_routes"]


_USAGE_PATHS = ("/v1/chat/completions", "/v1/completions")


async def inference(request: web.Request) -> web.StreamResponse:
    """Route an OpenAI request to a neuron that has its model (loading it first if needed) and relay.

    A streaming request gets its SSE headers at once and ``: keep-alive`` comments while the gateway waits
    (cold load, queue, prefill); then the engine's events as they come, or a final error event.
    """
    exchange = Exchange(started=time.perf_counter())
    body = await read_body(request)
    head = decode_head(body, request.path)
    await reserve_tokens(request, len(body), head.max_completion_tokens or head.max_tokens)
    router = request.app[router_key]
    conversation = Conversation(body, head.prompt_cache_key or head.user)
    if not head.stream:
        model_id, state = await router.route(head.model, conversation, client_of(request))
        body, _ = prepare_body(body, head.model, model_id, stream=False, wants_usage=False)
        async with Forward(
            request, model_id, state, path=request.path, body=body, exchange=exchange, conversation=conversation
        ) as (up, state):
            response = await relay(request, up, hide_usage=False, exchange=exchange)
        observe(request, model_id, state.name, exchange)
        return response
    await router.check(head.model)
    response = await open_event_stream(request)
    async with request.app[keepalives_key].waiting(response, OPENAI_KEEPALIVE) as waiting:
        model_id, state = await router.route(head.model, conversation, client_of(request))
        body, injected = prepare_body(
            body,
            head.model,
            model_id,
            stream=True,
            wants_usage=request.path in _USAGE_PATHS,
            stream_options=head.stream_options,
        )
        async with Forward(
            request, model_id, state, path=request.path, body=body, exchange=exchange, conversation=conversation
        ) as (up, state):
            await waiting.stop()
            await relay_stream(request, response, up, hide_usage=injected, exchange=exchange)
    observe(request, model_id, state.name, exchange)
    return response


async def list_models(request: web.Request) -> web.Response:
    """``GET /v1/models``: the merged catalogue (once the fleet was polled: right after start, it waits)."""
    lifecycle = request.app[lifecycle_key]
    await first_round(lifecycle.registry)
    return json_response({"object": "list", "data": model_cards(lifecycle.registry, lifecycle.loading())})


async def get_model(request: web.Request) -> web.Response:
    """``GET /v1/models/{id}``: one model (an alias finds its model)."""
    lifecycle = request.app[lifecycle_key]
    model_id = lifecycle.registry.resolve(request.match_info["model_id"])
    for card in model_cards(lifecycle.registry, lifecycle.loading()):
        if card["id"] == model_id:
            return json_response(card)
    raise NotFound(f"model {request.match_info['model_id']!r} not found", param="model", code="model_not_found")


async def fleet(request: web.Request) -> web.Response:
    """``GET /fleet``: neurons, devices and models as JSON."""
    lifecycle = request.app[lifecycle_key]
    report = fleet_report(lifecycle.registry, lifecycle.loading())
    if (peers := request.app.get(peers_key)) is not None:
        report["cluster"] = peers.report()
    return json_response(report)


def setup_routes(app: web.Application) -> None:
    """Attach the gateway API to ``app``."""
    r = app.router
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        r.add_post(path, inference)
    r.add_get("/v1/models", list_models)
    r.add_get("/v1/models/{model_id:.+}", get_model)
    r.add_get("/fleet", fleet)
