"""``base_app()``: the aiohttp Application every role starts from, and the bare metrics app.

A base app has the common middlewares, a request body limit, ``GET /healthz``, ``GET /version`` and
(optionally) ``GET /metrics`` over the app's own Prometheus registry. Role factories add their routes to it.
The server package knows nothing about which roles exist.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from helexa.server import parse_errors
from helexa.server.body import INFLATING_AT_ONCE, inflating_key
from helexa.server.httpmetrics import HttpMetrics
from helexa.server.middlewares import Guard, active_key, request_middleware, response_marker, role_key
from helexa.server.version import VersionInfo

__all__ = ["base_app", "cancel_all", "json_response", "max_body_key", "metrics_app", "registry_key", "version_key"]

registry_key = web.AppKey("registry_key", CollectorRegistry)
version_key = web.AppKey("version_key", VersionInfo)
max_body_key = web.AppKey("max_body_key", int)
http_metrics_key = web.AppKey("http_metrics_key", HttpMetrics)

_encoder = msgspec.json.Encoder()


def json_response(obj: object, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """Encode ``obj`` (msgspec structs included) with msgspec."""
    return web.Response(body=_encoder.encode(obj), status=status, content_type="application/json", headers=headers)


async def _healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "role": request.app[role_key]})


async def _root(request: web.Request) -> web.Response:
    """``GET /`` (and ``HEAD /``, the reachability probe clients such as Claude Code send): who answers."""
    version = request.app[version_key]
    return json_response({"name": "helexa", "role": request.app[role_key], "version": version.version})


async def _version(request: web.Request) -> web.Response:
    return json_response(request.app[version_key])


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[registry_key])
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def base_app(
    *,
    role: str,
    version: VersionInfo,
    max_body_bytes: int,
    registry: CollectorRegistry | None = None,
    serve_metrics: bool = True,
    guards: Sequence[Guard] = (),
    body_limits: Mapping[str, int] | None = None,
) -> web.Application:
    """A new Application for ``role`` with the shared middlewares and routes.

    :param max_body_bytes: larger request bodies are answered with 413 (checked against Content-Length
        before reading, and enforced while reading for chunked bodies).
    :param registry: the app's own Prometheus registry (a fresh one when ``None``).
    :param serve_metrics: ``False`` when metrics are served by a separate :func:`metrics_app`.
    :param guards: checks every request passes first, in order (see :class:`Guard`).
    :param body_limits: another limit than ``max_body_bytes`` for a path (an upload route, which reads its body
        as a stream: ``client_max_size`` does not apply to it).
    """
    parse_errors.install()
    metrics = HttpMetrics(registry if registry is not None else CollectorRegistry(), role, version)
    active: dict[int, web.Request] = {}
    app = web.Application(
        client_max_size=max_body_bytes,
        middlewares=[
            request_middleware(
                max_body_bytes=max_body_bytes,
                body_limits=body_limits,
                observe=metrics.observe,
                guards=guards,
                active=active,
            )
        ],
    )
    app[role_key] = role
    app[active_key] = active
    app[max_body_key] = max_body_bytes
    app[inflating_key] = asyncio.Semaphore(INFLATING_AT_ONCE)
    app[version_key] = version
    app[registry_key] = metrics.registry
    app[http_metrics_key] = metrics
    app.on_response_prepare.append(response_marker(role))
    app.router.add_get("/", _root)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/version", _version)
    if serve_metrics:
        app.router.add_get("/metrics", _metrics)
    return app


def metrics_app(*, role: str, registry: CollectorRegistry) -> web.Application:
    """An app that serves only ``/metrics`` for ``registry`` (another app's), on a port of its own."""
    active: dict[int, web.Request] = {}
    app = web.Application(
        client_max_size=64 * 1024, middlewares=[request_middleware(max_body_bytes=64 * 1024, active=active)]
    )
    app[role_key] = role
    app[active_key] = active
    app[registry_key] = registry
    app.on_response_prepare.append(response_marker(role))
    app.router.add_get("/metrics", _metrics)
    return app


async def cancel_all(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel background ``tasks`` and wait for each to finish (a cleanup context's teardown)."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
