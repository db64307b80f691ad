"""``make_gateway_app()``: the gateway's API application."""

from __future__ import annotations

from aiohttp import web

from helexa.config import Config
from helexa.server.app import base_app
from helexa.server.version import VersionInfo

__all__ = ["make_gateway_app"]


def make_gateway_app(cfg: Config, version: VersionInfo) -> web.Application:
    """Build the gateway API app. Its Prometheus registry (``registry_key``) is served on the metrics port."""
    return base_app(
        role="gateway",
        version=version,
        max_body_bytes=cfg.server.max_body_mb * 1024 * 1024,
        serve_metrics=False,
    )
