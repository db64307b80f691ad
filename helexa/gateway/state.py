"""What the gateway app holds for its lifetime, as typed ``AppKey``s — one place to find each.

Set by :func:`helexa.gateway.app.make_gateway_app` (and its cleanup context for the clients and lifecycle);
read by the handlers. The fleet page keeps its own keys (``helexa.gateway.ui``).
"""

from __future__ import annotations

from aiohttp import web

from helexa.gateway.keepalive import KeepAlives
from helexa.gateway.lifecycle import Lifecycle
from helexa.gateway.metrics import GatewayMetrics
from helexa.gateway.peers import Peers
from helexa.gateway.routing import Router

__all__ = [
    "first_byte_timeout_key",
    "gateway_metrics_key",
    "keepalives_key",
    "lifecycle_key",
    "peers_key",
    "router_key",
    "ui_app_key",
    "upstreams_key",
]

lifecycle_key = web.AppKey("lifecycle_key", Lifecycle)
router_key = web.AppKey("router_key", Router)  # which neuron serves each request
# Per neuron name, the relay's client (helexa.server.h1client.Upstream); polls and loads use an aiohttp session.
upstreams_key = web.AppKey("upstreams_key", dict)
gateway_metrics_key = web.AppKey("gateway_metrics_key", GatewayMetrics)
first_byte_timeout_key = web.AppKey("first_byte_timeout_key", float)  # [gateway] first_byte_timeout_seconds
keepalives_key = web.AppKey("keepalives_key", KeepAlives)  # one keep-alive timer, [gateway] keepalive_seconds
peers_key = web.AppKey("peers_key", Peers)  # this gateway's part in a cluster ([cluster] store; absent alone)
ui_app_key = web.AppKey("ui_app_key", web.Application)  # the fleet page's sub-application (its own state)
