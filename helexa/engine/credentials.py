"""Engine credentials: the per-load secret every engine is started with, and the one door that sends it.

An engine listens on loopback, where every local program and — through a browser — every web page can reach
it. So each load gets a random secret (the engine's API key, passed in its environment: ``/proc/<pid>/environ``
is readable by the neuron's user only, unlike its argv); only the neuron holds it. :class:`EngineCredentials`
maps each running engine's origin (``http://127.0.0.1:PORT``) to its secret, and :meth:`~EngineCredentials.
middleware`, installed on the neuron's client session to its engines, adds ``Authorization: Bearer <secret>``
to every request for that origin — relayed inference, token counts, engine metrics, harness calls alike — so
no caller has to remember it. An origin nobody registered gets nothing.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from aiohttp import ClientHandlerType, ClientRequest, ClientResponse

__all__ = ["EngineCredentials", "new_secret"]


def new_secret() -> str:
    """A fresh engine secret: 256 random bits, URL-safe (fits an HTTP header and an environment variable)."""
    return secrets.token_urlsafe(32)


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)


class EngineCredentials:
    """The secret of each running engine, by origin (one per neuron, shared by every harness)."""

    def __init__(self) -> None:
        self._by_origin: dict[tuple[str, str, int], dict[str, str]] = {}

    def add(self, url: str, secret: str) -> None:
        """Requests for ``url``'s origin (scheme, host, port) carry ``secret`` from now on."""
        self._by_origin[_origin(url)] = {"Authorization": f"Bearer {secret}"}

    def remove(self, url: str) -> None:
        """Forget ``url``'s origin (its engine stopped); a no-op when unknown."""
        self._by_origin.pop(_origin(url), None)

    def headers(self, url: str) -> dict[str, str]:
        """The headers a request for ``url`` must carry (empty: none is registered for its origin)."""
        return self._by_origin.get(_origin(url), {})

    async def middleware(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        """An aiohttp client middleware: a request for a registered origin carries that engine's secret."""
        if self._by_origin:
            url = request.url
            found = self._by_origin.get((url.scheme, (url.host or "").lower(), url.port or 80))
            if found is not None:
                request.headers.update(found)
        return await handler(request)
