"""Plugin loading: a fresh plugin manager per call, built-ins and third-party plugins found the same way.

Plugins are modules named by entry points in the ``helexa`` group (``[project.entry-points.helexa]``); helexa's
own harnesses (``plugins/`` in the source tree) are registered through the root ``pyproject.toml`` in exactly
that group. Nothing here runs at import time.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import pluggy

from helexa.engine import hookspecs
from helexa.engine.harness import Harness
from helexa.errors import PluginError

__all__ = [
    "ENTRY_POINT_GROUP",
    "HelexaPluginManager",
    "PluginInfo",
    "get_harnesses",
    "get_plugin_manager",
    "resolve_harness",
]

ENTRY_POINT_GROUP = "helexa"
logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One plugin found through an entry point: its name, the distribution that ships it, and an error
    message if it failed to import (then it is not registered)."""

    name: str
    distribution: str
    version: str
    error: str = ""


class HelexaPluginManager(pluggy.PluginManager):
    """A pluggy ``PluginManager`` for the ``helexa`` project that also records which distribution provided
    each entry-point plugin and which plugins failed to load (for ``helexa plugins``)."""

    def __init__(self) -> None:
        super().__init__(ENTRY_POINT_GROUP)
        self.add_hookspecs(hookspecs)
        self.entry_point_plugins: list[PluginInfo] = []

    def load_entry_points(self) -> int:
        """Import and register every plugin in the ``helexa`` entry-point group; return how many loaded.

        Unlike ``load_setuptools_entrypoints``, one plugin that fails to import is logged with its name and
        skipped instead of aborting the others: a broken third-party plugin must not take the neuron down.
        Blocked names (``plugins.disabled``) are not imported at all.
        """
        count = 0
        for dist in importlib.metadata.distributions():
            for ep in dist.entry_points:
                if ep.group != ENTRY_POINT_GROUP or self.is_blocked(ep.name) or self.get_plugin(ep.name):
                    continue
                dist_name = dist.metadata["name"] or "?"
                try:
                    plugin = ep.load()
                    self.register(plugin, name=ep.name)
                except Exception as exc:
                    logger.exception("plugin %r from %s failed to load; skipping it", ep.name, dist_name)
                    message = f"{type(exc).__name__}: {exc}"
                    self.entry_point_plugins.append(PluginInfo(ep.name, dist_name, dist.version, message))
                    continue
                self.entry_point_plugins.append(PluginInfo(ep.name, dist_name, dist.version))
                count += 1
        return count


def get_plugin_manager(load_entrypoints: bool = True, blocked: Iterable[str] = ()) -> HelexaPluginManager:
    """Build a new plugin manager: hookspecs, then blocked names, then entry points, then a pending check.

    :param load_entrypoints: ``False`` in tests that register plugin modules by hand.
    :param blocked: plugin names not to load (config ``plugins.disabled``).
    """
    pm = HelexaPluginManager()
    for name in blocked:
        pm.set_blocked(name)
    if load_entrypoints:
        pm.load_entry_points()
    pm.check_pending()
    return pm


def get_harnesses(pm: pluggy.PluginManager, owners: dict[str, str] | None = None) -> dict[str, type[Harness]]:
    """Collect the harness classes every plugin registers, by name.

    :param owners: when given, filled with harness name -> name of the plugin that registered it.
    :raises PluginError: when two harnesses share a name, or a registered object is not a Harness subclass.
    """
    harnesses: dict[str, type[Harness]] = {}
    owners = {} if owners is None else owners

    for plugin in pm.get_plugins():
        plugin_name = pm.get_name(plugin) or repr(plugin)
        impl = getattr(plugin, "register_harnesses", None)
        if impl is None:
            continue

        def register(cls: type[Harness], _owner: str = plugin_name) -> None:
            if not (isinstance(cls, type) and issubclass(cls, Harness)):
                raise PluginError(f"plugin {_owner!r} registered {cls!r}, which is not a helexa.Harness subclass")
            name = getattr(cls, "name", "")
            if not name:
                raise PluginError(f"plugin {_owner!r}: harness {cls.__qualname__} has no name")
            if name in harnesses:
                raise PluginError(
                    f"harness name {name!r} is registered twice: by plugin {owners[name]!r} and by {_owner!r}"
                )
            harnesses[name] = cls
            owners[name] = _owner

        pm.subset_hook_caller("register_harnesses", remove_plugins=[p for p in pm.get_plugins() if p is not plugin])(
            register=register
        )
    return harnesses


def resolve_harness(harnesses: dict[str, type[Harness]], name: str, *, wanted_by: str = "") -> type[Harness]:
    """Return the harness called ``name``.

    :raises PluginError: naming who asked for it and listing the installed harnesses.
    """
    try:
        return harnesses[name]
    except KeyError:
        available = ", ".join(sorted(harnesses)) or "none"
        who = f"{wanted_by}: " if wanted_by else ""
        raise PluginError(f"{who}harness {name!r} is required but not installed; available: {available}") from None
