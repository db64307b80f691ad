"""Bearer-token authentication, as a middleware factory (neuron token; gateway API keys).

Tokens are compared in constant time. A protected request without a valid token gets 401 in the API's own
envelope with ``WWW-Authenticate: Bearer``. With no tokens configured nothing is protected.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path

from aiohttp import web

from helexa.errors import AuthenticationError

__all__ = ["BearerGuard", "load_or_create_token", "presented_token"]


def load_or_create_token(path: Path) -> tuple[str, bool]:
    """The token stored at ``path``, or a new random one written there (directory 0700, file 0600).

    :returns: ``(token, created)``.
    :raises OSError: the file cannot be read or written.
    """
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token, False
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    os.chmod(path, 0o600)
    return token, True


def presented_token(request: web.Request, *, allow_x_api_key: bool = False) -> str:
    """The token a request carries: ``Authorization: Bearer …`` (or ``x-api-key`` when allowed)."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if allow_x_api_key:
        return request.headers.get("x-api-key", "").strip()
    return ""


class BearerGuard:
    """Requires one of ``tokens`` where ``protected(request)`` (a :class:`helexa.server.middlewares.Guard`).

    Nothing is required when ``tokens`` holds none. Compared in constant time; header bytes that are not
    UTF-8 are a wrong token (401), not a crash.
    """

    def __init__(
        self,
        tokens: Sequence[str],
        *,
        protected: Callable[[web.Request], bool],
        allow_x_api_key: bool = False,
        what: str = "token",
    ) -> None:
        self.expected = [t.encode() for t in tokens if t]
        self.protected, self.allow_x_api_key, self.what = protected, allow_x_api_key, what

    def enter(self, request: web.Request) -> None:
        """Admit ``request`` or raise :class:`AuthenticationError`."""
        if not self.expected or not self.protected(request):
            return
        given = presented_token(request, allow_x_api_key=self.allow_x_api_key).encode("utf-8", "surrogateescape")
        if not given:
            raise AuthenticationError(
                f"missing {self.what}: send 'Authorization: Bearer <{self.what}>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not any(hmac.compare_digest(given, t) for t in self.expected):
            raise AuthenticationError(f"invalid {self.what}", headers={"WWW-Authenticate": "Bearer"})
