"""Keeping web browsers from driving a daemon: JSON-only writes, Host and Origin checks.

Both daemons run it first, keys or no keys. A neuron starts programs; a gateway without keys (the default of
``--role both``) loads and unloads models for anyone who can reach it. A web page cannot read their answers
(no CORS headers are ever sent), but without these checks it could still *send* requests: a form or ``fetch``
with ``Content-Type: text/plain`` needs no preflight, and DNS rebinding points a name the attacker controls at
127.0.0.1, after which the page reads the answers too. So, before anything else:

- a POST/PUT/PATCH/DELETE must carry a JSON content type (``application/json`` or ``…+json``), which a
  browser can only send cross-site after a CORS preflight that is never granted → else 415 (a write without
  a body is exempt only when it bears no browser's marks: no ``Origin``, no ``Sec-Fetch-*``; so is a
  ``multipart/form-data`` upload to one of ``upload_paths`` — ``/v1/files`` — without those marks);
- the ``Host`` header must name this daemon: an IP address, ``localhost``, this machine's host names, or a
  name in ``allowed_hosts`` → else 403 (DNS-rebinding protection);
- a request with an ``Origin`` (browsers add it) from any other host, or ``Sec-Fetch-Site: cross-site``, is
  refused → 403. An origin passes when it is the host the request was sent to (the daemon's own page), or a
  name in ``allowed_hosts`` (``localhost`` and this machine's names included) — never merely because it is an
  IP address: a page served from any IP literal is as foreign as one served from a name.

Programs (SDKs, curl with ``-H 'content-type: application/json'``, the gateway) pass untouched.
"""

from __future__ import annotations

import socket
from collections.abc import Collection
from urllib.parse import urlsplit

from aiohttp import web

from helexa.errors import PermissionDenied, UnsupportedMediaType
from helexa.wire import is_ip_address

__all__ = ["BrowserGuard", "known_host_names"]

_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def known_host_names(extra: Collection[str] = ()) -> frozenset[str]:
    """The names this machine answers to by default (``localhost``, its host names), plus ``extra``."""
    names = {"localhost", socket.gethostname(), socket.getfqdn(), *extra}
    return frozenset(n.lower().rstrip(".") for n in names if n)


def _host_name(value: str) -> str:
    """The host part of a ``Host`` header or URL authority (port and IPv6 brackets removed), lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _from_browser(request: web.Request) -> bool:
    """Whether a browser sent ``request``: browsers mark every request with ``Sec-Fetch-*`` and writes with
    ``Origin``; programs send neither (a write without a body from a program needs no content type)."""
    headers = request.headers
    return "Origin" in headers or "Sec-Fetch-Mode" in headers or "Sec-Fetch-Site" in headers


class BrowserGuard:
    """The checks above, as a :class:`helexa.server.middlewares.Guard`; ``allowed_hosts`` are the names
    (besides IP addresses and ``*.localhost``) the ``Host`` header may carry. Writes under ``form_prefix`` (the
    gateway's own page, ``/ui/``, whose forms post ``application/x-www-form-urlencoded``) skip only the JSON
    rule: the Host, Origin and ``Sec-Fetch-Site`` checks hold for them too, and the page checks the origin of
    its forms itself."""

    def __init__(
        self, allowed_hosts: Collection[str], *, form_prefix: str = "", upload_paths: Collection[str] = ()
    ) -> None:
        self.allowed = frozenset(h.lower().rstrip(".") for h in allowed_hosts)
        self.form_prefix = form_prefix
        self.upload_paths = frozenset(upload_paths)
        self._good_hosts: set[str] = set()  # Host headers admitted before (a few): skips parsing on the hot path

    def _named(self, name: str) -> bool:
        return name.rstrip(".") in self.allowed or name.endswith(".localhost")

    def _known(self, name: str) -> bool:
        return is_ip_address(name) or self._named(name)

    def enter(self, request: web.Request) -> None:
        """Admit ``request`` or raise 403 / 415."""
        raw_host = request.headers.get("Host", "")
        if raw_host not in self._good_hosts:
            host = _host_name(raw_host)
            if not self._known(host):
                raise PermissionDenied(
                    f"Host {host[:100]!r} is not a name of this daemon; add it to allowed_hosts if clients use it",
                    code="host_not_allowed",
                )
            if len(self._good_hosts) < 64:
                self._good_hosts.add(raw_host)
        origin = request.headers.get("Origin")
        if origin is not None:
            name = _host_name(urlsplit(origin).netloc or origin)
            if name != _host_name(raw_host) and not self._named(name):
                raise PermissionDenied("cross-site requests from web pages are refused", code="cross_site_refused")
        if request.headers.get("Sec-Fetch-Site") == "cross-site":
            raise PermissionDenied("cross-site requests from web pages are refused", code="cross_site_refused")
        if request.method in _WRITES and (request.can_read_body or _from_browser(request)):
            if self.form_prefix and request.path.startswith(self.form_prefix):
                return
            kind = request.content_type
            if kind == "multipart/form-data" and request.path in self.upload_paths and not _from_browser(request):
                return
            if kind != "application/json" and not kind.endswith("+json"):
                raise UnsupportedMediaType(
                    f"send the body as JSON with 'Content-Type: application/json' (got {kind[:80]!r})",
                )
