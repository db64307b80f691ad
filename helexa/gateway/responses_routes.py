"""``POST /v1/responses``: the OpenAI Responses API (stateless) over chat-completion engines."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from helexa.errors import HelexaError
from helexa.gateway.affinity import Conversation
from helexa.gateway.forward import Caller, reserve_tokens
from helexa.gateway.proxy import Usage
from helexa.gateway.translation import Translator, answer_translated, ignored_tools_note, serve_translated
from helexa.server.body import read_body
from helexa.translate.responses import (
    ToolSet,
    decode_responses_request,
    to_chat_request,
    to_response,
)
from helexa.translate.responses_stream import ResponsesStream

__all__ = ["answer_response", "responses", "setup_responses_routes"]


def _failed(err: HelexaError, translator: Translator) -> bytes:
    assert isinstance(translator, ResponsesStream)
    return translator.fail(err.code or err.type, err.message)


async def responses(request: web.Request) -> web.StreamResponse:
    """``POST /v1/responses``: translate to chat, route, translate the answer back (whole or streamed)."""
    raw = await read_body(request)
    req = decode_responses_request(raw)
    await reserve_tokens(request, len(raw), req.max_output_tokens)
    tools = ToolSet(req.tools)
    return await serve_translated(
        request,
        model=req.model,
        chat_request=lambda model_id: to_chat_request(req, model_id, tools),
        stream=(lambda: ResponsesStream(req, req.model, tools)) if req.stream else None,
        whole=lambda chat: to_response(chat, req, req.model, tools),
        error_event=_failed,
        headers=ignored_tools_note(request, req.model, tools.dropped),
        conversation=Conversation(raw, req.prompt_cache_key or req.user or ""),
    )


async def answer_response(caller: Caller, raw: bytes) -> tuple[dict[str, Any], Usage | None]:
    """The whole answer to a ``/v1/responses`` request body ``raw`` (a batch's line): the response object and the
    engine's usage. :raises HelexaError: what the route would answer."""
    req = decode_responses_request(raw)
    await reserve_tokens(caller, len(raw), req.max_output_tokens)
    tools = ToolSet(req.tools)
    answer, exchange = await answer_translated(
        caller,
        model=req.model,
        chat_request=lambda model_id: to_chat_request(req, model_id, tools),
        whole=lambda chat: to_response(chat, req, req.model, tools),
        conversation=Conversation(raw, req.prompt_cache_key or req.user or ""),
    )
    return answer, exchange.usage


def setup_responses_routes(app: web.Application) -> None:
    """Attach ``/v1/responses`` to ``app``."""
    app.router.add_post("/v1/responses", responses)
