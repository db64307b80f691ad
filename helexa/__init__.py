"""helexa: self-hosted LLM serving for a small GPU fleet.

This module holds the public plugin API only. Plugins import these names and nothing else from helexa.
"""

from helexa.__about__ import __version__
from helexa.engine.harness import GpuState, Harness, HarnessContext, HarnessState, Inventory, NoOptions, PlacementPlan
from helexa.engine.hookspecs import hookimpl
from helexa.engine.process import ProcessHarness, model_file, serves_api
from helexa.errors import ConfigError, PreflightError
from helexa.wire.neuron import DeviceInfo, ModelSpec, RankSpec

__all__ = [
    "ConfigError",
    "DeviceInfo",
    "GpuState",
    "Harness",
    "HarnessContext",
    "HarnessState",
    "Inventory",
    "ModelSpec",
    "NoOptions",
    "PlacementPlan",
    "PreflightError",
    "ProcessHarness",
    "RankSpec",
    "__version__",
    "hookimpl",
    "model_file",
    "serves_api",
]
