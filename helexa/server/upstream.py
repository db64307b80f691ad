"""Calling upstream servers (engines, neurons) from a handler: stale keep-alive retries, header hygiene."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

import aiohttp

from helexa.errors import UpstreamError
from helexa.server.middlewares import ORIGIN_HEADER

__all__ = ["AnswerTooLarge", "open_upstream", "read_capped", "response_headers"]

logger = logging.getLogger(__name__)
# (the name sent, the name looked up: lower case, which both aiohttp's headers and the relay client's match)
_RELAYED = tuple(
    (name, name.lower()) for name in ("Content-Type", "Cache-Control", "Retry-After", "WWW-Authenticate", ORIGIN_HEADER)
)


class AnswerTooLarge(UpstreamError):
    """An upstream's answer is longer than the caller reads whole (502, ``upstream_error``)."""


async def read_capped(response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """The whole body of ``response``, at most ``limit`` bytes; ``what`` names the server in the error.

    :raises AnswerTooLarge: it announces or sends more (the connection is then closed, never reused).
    :raises aiohttp.ClientPayloadError: the body broke off.
    """
    if response.content_length is not None and response.content_length > limit:
        response.close()
        raise AnswerTooLarge(f"{what} sent an answer of {response.content_length} bytes; at most {limit} are read")
    data = bytearray()
    while chunk := await response.content.read(limit + 1 - len(data)):
        data += chunk
        if len(data) > limit:
            response.close()
            raise AnswerTooLarge(f"{what} sent an answer of more than {limit} bytes; at most {limit} are read")
    return bytes(data)


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
    """POST and wait for the response head; sent once, never again (the engine may have begun the generation).

    :raises UpstreamError: the engine cannot be reached, or closed the connection without answering.
    """
    try:
        return await session.post(url, data=body, headers=headers, allow_redirects=False)
    except (aiohttp.ClientConnectionError, TimeoutError) as exc:
        raise UpstreamError(f"engine at {url} is not reachable: {exc}") from None
