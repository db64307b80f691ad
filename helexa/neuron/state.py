"""What the neuron app holds for its lifetime, as typed ``AppKey``s — one place to find each.

Set by :func:`helexa.neuron.app.make_neuron_app` and its cleanup context; read by the handlers.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

from helexa.neuron.metrics import NeuronMetrics
from helexa.neuron.models import ModelManager
from helexa.neuron.normaliser import Markers
from helexa.wire.neuron import Discovery

__all__ = [
    "discovery_key",
    "load_on_demand_key",
    "manager_key",
    "markers_key",
    "max_answer_key",
    "neuron_metrics_key",
    "session_key",
    "started_key",
]

manager_key = web.AppKey("manager_key", ModelManager)
discovery_key = web.AppKey("discovery_key", Discovery)  # read once at start
session_key = web.AppKey("session_key", aiohttp.ClientSession)  # the one client session to the engines
neuron_metrics_key = web.AppKey("neuron_metrics_key", NeuronMetrics)
markers_key = web.AppKey("markers_key", Markers)  # [neuron] reasoning_markers, tool_call_markers
started_key = web.AppKey("started_key", float)  # monotonic time of the start (uptime)
load_on_demand_key = web.AppKey("load_on_demand_key", bool)  # [neuron] load_on_demand
max_answer_key = web.AppKey("max_answer_key", int)  # [server] max_answer_mb, in bytes: an engine's answer read whole
