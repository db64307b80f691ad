"""A model's status changes only through ``ModelManager._move``, checked against one table that also names the
event each change emits (the neuron's load and crash metrics count those events)."""

from __future__ import annotations

import pytest

from helexa.neuron.models import ModelManager
from helexa.neuron.records import TRANSITIONS, InvalidTransition, ModelRecord
from helexa.wire.neuron import ModelSpec, ModelStatus
from tests.conftest import make_config
from tests.fakes.fake_harness import FakeHarness


@pytest.fixture
def manager(tmp_path):
    events: list[tuple[str, str, float]] = []
    cfg = make_config(neuron={"model_dirs": [str(tmp_path)]}, models=[])
    built = ModelManager(cfg, {"fake": FakeHarness}, observer=lambda *e: events.append(e))
    built.events = events  # type: ignore[attr-defined]
    return built


def test_the_table_knows_every_status():
    assert set(TRANSITIONS) == set(ModelStatus)
    assert all(set(targets) <= set(ModelStatus) for targets in TRANSITIONS.values())


@pytest.mark.parametrize(
    ("path", "events"),
    [
        (["loading", "downloading", "loading", "loaded"], ["loaded"]),
        (["loading", "loaded", "failed", "unloaded"], ["loaded", "crashed"]),
        (["loading", "loaded", "sleeping", "loaded", "unloaded"], ["loaded", "woke"]),
        (["downloading", "failed", "unloaded"], ["failed"]),
        (["loading", "unloaded"], []),  # cancelled
    ],
)
def test_allowed_paths_emit_their_events(manager, path, events):
    record = ModelRecord(spec=ModelSpec(model_id="m"), harness="fake")
    for status in path:
        manager._move(record, ModelStatus(status), seconds=1.5)
    assert record.status == path[-1]
    assert [e[0] for e in manager.events] == events and all(e[1] == "m" for e in manager.events)


@pytest.mark.parametrize(
    ("start", "to"),
    [
        ("unloaded", "loaded"),
        ("sleeping", "failed"),
        ("failed", "loaded"),
        ("loaded", "loading"),
        ("unloaded", "failed"),
    ],
)
def test_a_change_outside_the_table_is_refused_and_changes_nothing(manager, start, to):
    record = ModelRecord(spec=ModelSpec(model_id="m"), harness="fake", status=ModelStatus(start), last_error="kept")
    with pytest.raises(InvalidTransition, match=f"from {start} to {to}"):
        manager._move(record, ModelStatus(to), last_error="lost")
    assert record.status == start and record.last_error == "kept" and manager.events == []


def test_a_named_event_overrides_the_tables_and_fields_change_with_the_status(manager):
    record = ModelRecord(spec=ModelSpec(model_id="m"), harness="fake", status=ModelStatus.LOADING)
    manager._move(record, ModelStatus.UNLOADED, event="refused", seconds=0.2, last_error="no room")
    assert (record.status, record.last_error) == ("unloaded", "no room")
    assert manager.events == [("refused", "m", 0.2)]
