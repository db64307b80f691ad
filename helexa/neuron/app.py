"""``make_neuron_app()``: the neuron's control API and OpenAI pass-through."""

from __future__ import annotations

from aiohttp import web

from helexa.config import Config
from helexa.harness import Harness
from helexa.server.app import base_app
from helexa.server.version import VersionInfo

__all__ = ["harnesses_key", "make_neuron_app"]

harnesses_key = web.AppKey("harnesses_key", dict[str, type[Harness]])


def make_neuron_app(cfg: Config, version: VersionInfo, harnesses: dict[str, type[Harness]]) -> web.Application:
    """Build the neuron app for ``cfg.neuron`` with the installed ``harnesses``."""
    app = base_app(role="neuron", version=version, max_body_bytes=cfg.server.max_body_mb * 1024 * 1024)
    app[harnesses_key] = harnesses
    return app
