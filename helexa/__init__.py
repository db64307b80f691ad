"""helexa: self-hosted LLM serving for a small GPU fleet.

This module holds the public plugin API only. Plugins import these names and nothing else from helexa.
"""

from helexa.__about__ import __version__
from helexa.harness import Harness, HarnessState, NoOptions, PlacementPlan
from helexa.hookspecs import hookimpl
from helexa.wire.neuron import DeviceInfo, ModelSpec

__all__ = [
    "DeviceInfo",
    "Harness",
    "HarnessState",
    "ModelSpec",
    "NoOptions",
    "PlacementPlan",
    "__version__",
    "hookimpl",
]
