"""Bearer-token authentication, as a middleware factory (neuron token; gateway API keys).

Tokens are compared in constant time. A protected request without a valid token gets 401 in the API's own
envelope with ``WWW-Authenticate: Bearer``. With no tokens configured nothing is protected.
"""

from __future__ import annotations

import hmac
import math
import os
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from aiohttp import web

from helexa.errors import AuthenticationError, HelexaError

__all__ = ["BearerGuard", "FailureThrottle", "TooManyFailures", "load_or_create_token", "presented_token"]


class TooManyFailures(HelexaError):
    """An address sent too many wrong credentials; it is refused for a while (429 with Retry-After)."""

    status = 429
    code = "too_many_failed_attempts"


class FailureThrottle:
    """Wrong credentials per client address: a bucket of ``burst`` failures, refilled at one every ``every``
    seconds. While an address's bucket is empty its requests are refused before any credential is checked —
    a right key included, so the answer tells a guesser nothing. Addresses with a full bucket are forgotten;
    at most ``max_addresses`` are kept (the oldest go first). ``clock`` is injectable for tests.

    Behind a reverse proxy every client shares the proxy's address: one guesser then slows everyone down,
    which is the point of a throttle.
    """

    def __init__(
        self,
        burst: int = 10,
        every: float = 6.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = 4096,
    ) -> None:
        self.burst, self.every, self.clock, self.max_addresses = burst, every, clock, max_addresses
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (failures left, when counted)

    def _left(self, address: str) -> float:
        left, when = self._buckets[address]
        left = min(self.burst, left + (self.clock() - when) / self.every)
        if left >= self.burst:
            del self._buckets[address]
        return left

    def check(self, address: str) -> None:
        """:raises TooManyFailures: ``address`` used up its failures (Retry-After: until one is back)."""
        if not self._buckets or address not in self._buckets:  # the hot path: nobody failed
            return
        left = self._left(address)
        if left < 1:
            wait = math.ceil((1 - left) * self.every)
            raise TooManyFailures(
                f"too many wrong keys from {address}; wait {wait} s, then use a valid key",
                headers={"Retry-After": str(max(1, wait))},
            )

    def failed(self, address: str) -> None:
        """Count one wrong credential from ``address``."""
        left = self._left(address) if address in self._buckets else float(self.burst)
        self._buckets[address] = (left - 1, self.clock())
        while len(self._buckets) > self.max_addresses:
            del self._buckets[next(iter(self._buckets))]


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
        self.throttle = FailureThrottle()

    def enter(self, request: web.Request) -> None:
        """Admit ``request`` or raise :class:`AuthenticationError` (:class:`TooManyFailures` after too many
        wrong tokens from its address)."""
        if not self.expected or not self.protected(request):
            return
        given = presented_token(request, allow_x_api_key=self.allow_x_api_key).encode("utf-8", "surrogateescape")
        if not given:
            raise AuthenticationError(
                f"missing {self.what}: send 'Authorization: Bearer <{self.what}>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        address = request.remote or ""
        self.throttle.check(address)
        if not any(hmac.compare_digest(given, t) for t in self.expected):
            self.throttle.failed(address)
            raise AuthenticationError(f"invalid {self.what}", headers={"WWW-Authenticate": "Bearer"})
