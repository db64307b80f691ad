"""Plugin discovery and harness registration: fresh managers, duplicates, blocked and broken plugins."""

from __future__ import annotations

import importlib.metadata
import logging
import types

import pytest

from helexa import Harness, HarnessState, PlacementPlan, hookimpl
from helexa.engine.plugins import get_harnesses, get_plugin_manager, resolve_harness
from helexa.errors import ConfigError, PluginError


class EchoHarness(Harness):
    name = "echo"

    async def preflight(self, spec, devices):
        return PlacementPlan()

    async def load(self, spec, plan):
        return "http://127.0.0.1:1/v1"

    async def unload(self, model_id):
        return None

    async def state(self, model_id):
        return HarnessState.STOPPED


def plugin_module(name: str, *classes: type) -> types.ModuleType:
    module = types.ModuleType(name)

    @hookimpl
    def register_harnesses(register):
        for cls in classes:
            register(cls)

    module.register_harnesses = register_harnesses
    return module


def test_registered_harnesses_are_collected_by_name(pm):
    pm.register(plugin_module("p1", EchoHarness))
    owners: dict[str, str] = {}
    assert get_harnesses(pm, owners) == {"echo": EchoHarness}
    assert owners == {"echo": "p1"}


def test_each_manager_is_fresh(pm):
    pm.register(plugin_module("p1", EchoHarness))
    assert get_harnesses(get_plugin_manager(load_entrypoints=False)) == {}


def test_duplicate_harness_names_are_rejected(pm):
    pm.register(plugin_module("first", EchoHarness))
    pm.register(plugin_module("second", EchoHarness))
    with pytest.raises(PluginError, match="harness name 'echo' is registered twice: by plugin '.*' and by '.*'"):
        get_harnesses(pm)


def test_registering_a_non_harness_is_rejected(pm):
    pm.register(plugin_module("bad", dict))
    with pytest.raises(PluginError, match="plugin 'bad' registered <class 'dict'>, which is not a helexa.Harness"):
        get_harnesses(pm)


def test_missing_harness_lists_the_available_ones():
    with pytest.raises(PluginError) as info:
        resolve_harness({"echo": EchoHarness, "dummy": EchoHarness}, "vllm", wanted_by="$.models[0] (m)")
    assert info.value.message == "$.models[0] (m): harness 'vllm' is required but not installed; available: dummy, echo"


def test_options_are_checked_against_the_harness_schema():
    with pytest.raises(ConfigError, match=r"harness 'echo', model 'm': options: Object contains unknown field"):
        EchoHarness.parse_options({"ctx": 1}, model_id="m")


def test_entry_point_plugin_is_discovered():
    """The dummy plugin (tests/fixtures/helexa_dummy_plugin) is installed by the test command."""
    pm = get_plugin_manager()
    infos = {p.name: p for p in pm.entry_point_plugins}
    assert infos["dummy"].distribution == "helexa-dummy-plugin"
    assert infos["dummy"].version == "0.0.1"
    harnesses = get_harnesses(pm)
    assert harnesses["dummy"].__module__ == "helexa_dummy_plugin"
    opts = harnesses["dummy"].parse_options({"greeting": "hi"})
    assert opts.greeting == "hi"


def test_blocked_plugin_is_not_loaded():
    pm = get_plugin_manager(blocked=["dummy"])
    assert "dummy" not in {p.name for p in pm.entry_point_plugins}
    assert "dummy" not in get_harnesses(pm)


def test_broken_plugin_is_logged_and_skipped(monkeypatch, caplog):
    class BrokenDist:
        metadata = {"name": "helexa-broken"}
        version = "9.9"
        entry_points = [importlib.metadata.EntryPoint("broken", "helexa_no_such_module", "helexa")]

    real = importlib.metadata.distributions
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: [BrokenDist(), *real()])
    with caplog.at_level(logging.ERROR, logger="helexa.engine.plugins"):
        pm = get_plugin_manager()
    infos = {p.name: p for p in pm.entry_point_plugins}
    assert infos["broken"].error.startswith("ModuleNotFoundError")
    assert "plugin 'broken' from helexa-broken failed to load" in caplog.text
    assert "dummy" in get_harnesses(pm), "one broken plugin must not stop the others"
