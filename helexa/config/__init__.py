"""Configuration: strict msgspec structs, loaded from one TOML file with environment overrides.

One file serves every role: the gateway reads ``[gateway] [auth] [eviction] [scheduler] [cluster] [batches] [[neurons]]
[[models]]``, the
neuron reads ``[neuron]``, both read ``[server]`` and ``[plugins]``. The model catalogue may also live in its own
file named by ``gateway.catalogue``. Defaults let ``helexa run --role both`` start with no file at all.

Environment variables ``HELEXA_<SECTION>__<KEY>`` override the file (a double underscore nests; a number
indexes a list: ``HELEXA_NEURONS__0__TOKEN``). Values are read as TOML values when they parse as one
(``8``, ``true``, ``["a", "b"]``), else as plain strings. This module is the only place that reads
``os.environ``.

Every field documents itself with ``msgspec.Meta(description=…)``; ``helexa config init`` renders the
commented examples in ``config/`` from those descriptions.
"""

from helexa.config.base import ConfigStruct, PluginsSection, ServerSection
from helexa.config.catalogue import Catalogue, ModelEntry
from helexa.config.gateway import (
    AuthSection,
    BatchesSection,
    ClusterSection,
    EvictionSection,
    GatewaySection,
    KeyEntry,
    NeuronRef,
    SchedulerSection,
)
from helexa.config.loading import RENAMED, Config, apply_env_overrides, load_config, parse_listen, rename_keys
from helexa.config.neuron import NeuronSection

__all__ = [
    "RENAMED",
    "AuthSection",
    "BatchesSection",
    "Catalogue",
    "ClusterSection",
    "Config",
    "ConfigStruct",
    "EvictionSection",
    "GatewaySection",
    "KeyEntry",
    "ModelEntry",
    "NeuronRef",
    "NeuronSection",
    "PluginsSection",
    "SchedulerSection",
    "ServerSection",
    "apply_env_overrides",
    "load_config",
    "parse_listen",
    "rename_keys",
]
