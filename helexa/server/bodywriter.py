"""Writing a streamed response's body from a callback: no ``await`` per piece.

aiohttp's ``StreamResponse.write`` is a coroutine; a relay that wants to pass each piece of an upstream's body on
from the upstream's socket callback (see :meth:`helexa.server.h1client.UpstreamResponse.relay`) cannot await.
:class:`BodyWriter` writes to the client's transport itself, framed as aiohttp's own writer frames it: HTTP/1.1
chunked encoding when the response went out chunked, the bytes as they are otherwise (HTTP/1.0). It is used only
between ``prepare()`` and ``write_eof()`` of a response that does not compress, and never interleaved with an
``await response.write()`` that is still in progress.
"""

from __future__ import annotations

from aiohttp import hdrs, web

__all__ = ["BodyWriter"]

_WRITELINES = 16 * 1024  # larger pieces go out without being copied into their chunk frame


class BodyWriter:
    """The body of ``response`` (prepared, for ``request``), written at once; ``sent`` counts its bytes."""

    __slots__ = ("_chunked", "_high", "_request", "_response", "_transport", "sent")

    def __init__(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        if not response.prepared:
            raise RuntimeError("the response must be prepared first")
        self._request, self._response = request, response
        self._transport = transport = request.transport
        self._chunked = response.headers.get(hdrs.TRANSFER_ENCODING) == "chunked"
        self._high = transport.get_write_buffer_limits()[1] if transport is not None else 0
        self.sent = 0

    def write(self, data: bytes) -> bool:
        """Send ``data`` now; True when the client's send buffer is past its high-water mark (the source should
        pause until :meth:`drain` returned).

        :raises ConnectionResetError: the client went away.
        """
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away")
        self.sent += len(data)
        if not self._chunked:
            transport.write(data)
        elif len(data) < _WRITELINES:
            transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
        return transport.get_write_buffer_size() > self._high

    async def drain(self) -> None:
        """Wait until the client took enough of what was sent (the transport resumed its protocol's writing)."""
        writer = await self._response.prepare(self._request)  # prepared already: its writer, whose protocol pauses
        if writer is not None:
            await writer.drain()
