"""HTTP-level errors (a request aiohttp cannot parse) in the JSON error envelope, not aiohttp's text/plain.

aiohttp answers framing, header and content-encoding errors itself, before any middleware runs, from
``RequestHandler.handle_error``; aiohttp 3 offers no hook for that answer. :func:`install` wraps that method
once per process so those answers carry the JSON envelope — Anthropic's when the request's path was read and is
``/v1/messages…``, else OpenAI's (a body whose encoding breaks in the very packet of its head fails before
aiohttp made the request: the path is not known then) — with the same status and ``x-helexa-origin``. The
wrapper only rewrites the body of aiohttp's own error responses; everything else is aiohttp's behaviour unchanged.
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec
from aiohttp import web, web_protocol

from helexa.errors import HelexaError
from helexa.server.middlewares import ORIGIN_HEADER, error_body

__all__ = ["install"]

_encoder = msgspec.json.Encoder()
_MARK = "_helexa_json_errors"


def _json_error(status: int, text: str, *, anthropic: bool) -> web.Response:
    message = text.strip().splitlines()[0] if text.strip() else f"HTTP {status}"
    error = HelexaError(
        f"the request could not be read: {message}"[:1000],
        code="bad_http_request" if status < 500 else "internal_error",
        status_override=status,
    )
    response = web.Response(
        status=status,
        body=error_body(error, anthropic=anthropic),
        content_type="application/json",
        headers={ORIGIN_HEADER: "helexa"},
    )
    response.force_close()
    return response


def install() -> None:
    """Make aiohttp's own error answers JSON (idempotent)."""
    handler_cls: Any = web_protocol.RequestHandler
    original = handler_cls.handle_error
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def handle_error(self: Any, request: Any, status: int = 500, exc: Any = None, message: Any = None) -> Any:
        response = original(self, request, status, exc, message)
        if isinstance(response, web.Response) and response.content_type in ("text/plain", "text/html"):
            path = getattr(request, "path", "") if request is not None else ""
            return _json_error(response.status, response.text or "", anthropic=path.startswith("/v1/messages"))
        return response

    setattr(handle_error, _MARK, True)
    handler_cls.handle_error = handle_error
