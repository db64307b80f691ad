"""Calling upstream servers (engines, neurons) from a handler: stale keep-alive retries, header hygiene."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

import aiohttp

from helexa.errors import UpstreamError
from helexa.server.middlewares import ORIGIN_HEADER

__all__ = ["STALE_RETRIES", "open_upstream", "response_headers"]

logger = logging.getLogger(__name__)
STALE_RETRIES = 2
# (the name sent, the name looked up: lower case, which both aiohttp's headers and the relay client's match)
_RELAYED = tuple(
    (name, name.lower()) for name in ("Content-Type", "Cache-Control", "Retry-After", "WWW-Authenticate", ORIGIN_HEADER)
)


class _Answer(Protocol):
    @property
    def headers(self) -> Mapping[str, str]: ...


def response_headers(upstream: _Answer, *, origin: str) -> dict[str, str]:
    """The upstream's end-to-end response headers worth relaying; ``x-helexa-origin`` kept or set to ``origin``.
    ``upstream``: an aiohttp ``ClientResponse`` or a relay client's ``UpstreamResponse``.

    An explicit list, not a copy minus hop-by-hop headers: it is cheaper on every request and never leaks an
    engine's server banner or cookies. A value that is not ASCII is left out (no header of the list has one).
    """
    source = upstream.headers
    headers = {name: value for name, key in _RELAYED if (value := source.get(key)) is not None and value.isascii()}
    headers.setdefault(ORIGIN_HEADER, origin)
    return headers


async def open_upstream(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> aiohttp.ClientResponse:
    """POST and wait for the response head.

    A pooled keep-alive connection the engine has already closed fails before any response; that is retried
    (the engine never saw the request), up to :data:`STALE_RETRIES` times.

    :raises UpstreamError: the engine cannot be reached.
    """
    for attempt in range(STALE_RETRIES + 1):
        try:
            return await session.post(url, data=body, headers=headers)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            if isinstance(exc, aiohttp.ClientConnectorError) or attempt == STALE_RETRIES:
                raise UpstreamError(f"engine at {url} is not reachable: {exc}") from None
            logger.debug("stale connection to %s (%s); retrying", url, exc)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise UpstreamError(f"engine at {url} is not reachable: {exc}") from None
    raise AssertionError("unreachable")
