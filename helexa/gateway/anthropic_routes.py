"""``POST /v1/messages`` and ``/v1/messages/count_tokens``: the Anthropic API over OpenAI-speaking engines.

The request is validated and translated to an OpenAI chat request, routed like any other (cold loads,
failover, metrics), and the answer translated back — whole, or event by event for streams, with a ``ping``
after ``message_start`` and whenever the engine is silent (``helexa.gateway.translation``). Errors are rendered in
Anthropic's envelope by the error middleware (it knows ``/v1/messages`` routes); a failure after the stream
started becomes an ``event: error``.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from helexa.errors import InvalidRequest
from helexa.gateway.affinity import Conversation, anthropic_session
from helexa.gateway.forward import Caller, reserve_tokens
from helexa.gateway.proxy import Usage
from helexa.gateway.queue import client_of
from helexa.gateway.state import lifecycle_key, router_key
from helexa.gateway.translation import answer_translated, ignored_tools_note, serve_translated
from helexa.server.app import json_response
from helexa.server.body import read_body
from helexa.translate.anthropic import (
    chat_messages,
    chat_tools,
    decode_count_request,
    decode_request,
    offered_tools,
    to_anthropic_message,
    to_chat_request,
)
from helexa.translate.anthropic_stream import AnthropicStream, event

__all__ = ["answer_message", "count_tokens", "messages", "setup_anthropic_routes"]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()
_PING = event("ping", {})


async def messages(request: web.Request) -> web.StreamResponse:
    """``POST /v1/messages``."""
    raw = await read_body(request)
    req = decode_request(raw)
    await reserve_tokens(request, len(raw), req.max_tokens)
    dropped = offered_tools(req.tools)[1]
    session = anthropic_session(req.metadata.user_id) if req.metadata is not None else ""
    return await serve_translated(
        request,
        model=req.model,
        chat_request=lambda model_id: to_chat_request(req, model_id),
        stream=(lambda: AnthropicStream(req.model, req.stop_sequences)) if req.stream else None,
        whole=lambda chat: to_anthropic_message(chat, req, req.model),
        keepalive=_PING,
        headers=ignored_tools_note(request, req.model, dropped),
        conversation=Conversation(raw, session or request.headers.get("x-claude-code-session-id", "")),
    )


async def answer_message(caller: Caller, raw: bytes) -> tuple[dict[str, Any], Usage | None]:
    """The whole answer to a ``/v1/messages`` request body ``raw`` (a message batch's line): the message and
    the engine's usage. :raises HelexaError: what the route would answer (streaming is not asked here)."""
    req = decode_request(raw)
    if req.stream:
        raise InvalidRequest("a message batch's requests cannot stream: remove 'stream'", param="stream")
    await reserve_tokens(caller, len(raw), req.max_tokens)
    session = anthropic_session(req.metadata.user_id) if req.metadata is not None else ""
    answer, exchange = await answer_translated(
        caller,
        model=req.model,
        chat_request=lambda model_id: to_chat_request(req, model_id),
        whole=lambda chat: to_anthropic_message(chat, req, req.model),
        conversation=Conversation(raw, session),
    )
    return answer, exchange.usage


async def count_tokens(request: web.Request) -> web.Response:
    """``POST /v1/messages/count_tokens``: ``{"input_tokens": n}`` from the model's own tokenizer."""
    count_request = decode_count_request(await read_body(request))
    model_id, state = await request.app[router_key].route(count_request.model, client=client_of(request))
    client = request.app[lifecycle_key].clients[state.name]
    messages_ = chat_messages(count_request.system, count_request.messages)
    count = await client.count_tokens(model_id, messages_, chat_tools(count_request.tools))
    return json_response({"input_tokens": count})


def setup_anthropic_routes(app: web.Application) -> None:
    """Attach the Anthropic routes to ``app``."""
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
