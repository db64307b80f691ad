"""``POST /v1/responses``: the OpenAI Responses API (stateless) over chat-completion engines."""

from __future__ import annotations

import msgspec
from aiohttp import web

from helexa.gateway.translation import serve_translated
from helexa.translate.responses import ResponsesStream, decode_responses_request, to_chat_request, to_response

__all__ = ["responses", "setup_responses_routes"]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


async def responses(request: web.Request) -> web.StreamResponse:
    """``POST /v1/responses``: translate to chat, route, translate the answer back (whole or streamed)."""
    req = decode_responses_request(await request.read())
    return await serve_translated(
        request,
        model=req.model,
        chat_request=lambda model_id: to_chat_request(req, model_id),
        stream=(lambda: ResponsesStream(req, req.model)) if req.stream else None,
        whole=lambda chat: to_response(chat, req, req.model),
    )


def setup_responses_routes(app: web.Application) -> None:
    """Attach ``/v1/responses`` to ``app``."""
    app.router.add_post("/v1/responses", responses)
