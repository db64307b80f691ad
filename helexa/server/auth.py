"""Bearer-token authentication, as a middleware factory (neuron token; gateway API keys).

Tokens are compared in constant time. A protected request without a valid token gets 401 in the API's own
envelope with ``WWW-Authenticate: Bearer``. With no tokens configured nothing is protected.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence

from aiohttp import web

from helexa.errors import AuthenticationError
from helexa.server.middlewares import Handler

__all__ = ["bearer_auth", "presented_token"]


def presented_token(request: web.Request, *, allow_x_api_key: bool = False) -> str:
    """The token a request carries: ``Authorization: Bearer …`` (or ``x-api-key`` when allowed)."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if allow_x_api_key:
        return request.headers.get("x-api-key", "").strip()
    return ""


def bearer_auth(
    tokens: Sequence[str],
    *,
    protected: Callable[[web.Request], bool],
    allow_x_api_key: bool = False,
    what: str = "token",
) -> list[Callable[[web.Request, Handler], object]]:
    """Middlewares (none when ``tokens`` is empty) requiring one of ``tokens`` where ``protected(request)``."""
    expected = [t.encode() for t in tokens if t]

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if protected(request):
            # surrogateescape: header bytes that are not UTF-8 are a wrong key (401), not a crash
            given = presented_token(request, allow_x_api_key=allow_x_api_key).encode("utf-8", "surrogateescape")
            if not given:
                raise AuthenticationError(
                    f"missing {what}: send 'Authorization: Bearer <{what}>'",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if not any(hmac.compare_digest(given, t) for t in expected):
                raise AuthenticationError(f"invalid {what}", headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return [middleware] if expected else []
