"""Reading a request body with its size capped as it is read, compressed bodies included.

aiohttp's ``request.read()`` raises its buffers to the body limit before it reads, so a compressed body (a
1 MB gzip that inflates to 1 GiB) is inflated up to 16 MiB per step into a buffer of up to 32 MiB before the
limit is checked — eight such requests took a gateway from 51 MB to 430 MB. Here a body with a
``Content-Encoding`` is read in the parser's own small steps (64 KiB, flow-controlled: the socket is not read
while the handler does not ask for more), counted as it inflates and refused with 413 the moment it passes the
limit; at most :data:`INFLATING_AT_ONCE` such bodies are read at once per app (the others wait, holding only
their unread compressed bytes in the socket). A body without an encoding is read as before: its
``Content-Length`` was already checked against the limit.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

__all__ = ["INFLATING_AT_ONCE", "inflating_key", "read_body"]

INFLATING_AT_ONCE = 4
inflating_key = web.AppKey("inflating_key", asyncio.Semaphore)


async def read_body(request: web.Request, limit: int | None = None) -> bytes:
    """The whole (decoded) body of ``request``, at most ``limit`` bytes (default: the app's body limit,
    ``client_max_size``; a route with a larger one — the middleware's ``body_limits`` checked its Content-Length
    — gives it here).

    :raises web.HTTPRequestEntityTooLarge: the decoded body is larger than the limit.
    """
    limit = request.client_max_size if limit is None else limit
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if not encoding or encoding == "identity":
        if limit == request.client_max_size:
            return await request.read()
        return await _capped(request, limit)
    async with request.config_dict[inflating_key]:
        return await _capped(request, limit)


async def _capped(request: web.Request, limit: int) -> bytes:
    body = bytearray()
    while chunk := await request.content.readany():
        body += chunk
        if len(body) > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))
    return bytes(body)
