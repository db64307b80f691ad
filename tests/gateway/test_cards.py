"""Model cards by one table: what several neurons say of a model becomes one status (pure, over a registry)."""

from __future__ import annotations

import pytest

from helexa.config import ModelEntry, NeuronRef
from helexa.gateway.catalogue import PRECEDENCE, CardStatus, model_cards
from helexa.gateway.registry import Registry
from helexa.wire.neuron import Discovery, HostInfo, ModelInfo, ModelStatus, NeuronHealth

S = ModelStatus


def registry(*, statuses: dict[str, ModelStatus | None], entry: ModelEntry, multi_host: bool = False) -> Registry:
    refs = [NeuronRef(name=name, endpoint=f"http://{name}:1") for name in statuses]
    fleet = Registry(refs, [entry])
    for name, status in statuses.items():
        state = fleet.neurons[name]
        host = HostInfo(cpu_count=2, ram_total_mb=16000, ram_available_mb=16000)
        state.discovery = Discovery(hostname=name, harnesses=["vllm"], host=host, multi_host=multi_host)
        state.health = NeuronHealth(uptime_s=1, host=host)
        state.healthy = True
        if status is not None:
            state.models[entry.id] = ModelInfo(id=entry.id, harness="vllm", status=status)
    return fleet


SMALL = ModelEntry(id="m", harness="vllm", vram_mb=4000)


@pytest.mark.parametrize(
    ("statuses", "expected", "loaded_on"),
    [
        ({"a": None, "b": None}, "available", []),
        ({"a": S.LOADING, "b": None}, "loading", []),
        ({"a": S.LOADING, "b": S.DOWNLOADING}, "downloading", []),
        ({"a": S.DOWNLOADING, "b": S.LOADED}, "loaded", ["b"]),
        ({"a": S.LOADED, "b": S.LOADED}, "loaded", ["a", "b"]),
        ({"a": S.SLEEPING, "b": None}, "available", []),  # a sleeping engine wakes on the next request
        ({"a": S.FAILED, "b": None}, "available", []),
    ],
)
def test_what_several_neurons_say_becomes_one_status(statuses, expected, loaded_on):
    card = model_cards(registry(statuses=statuses, entry=SMALL), [])[0]
    assert (card["status"], card["loaded_on"]) == (expected, loaded_on)


def test_a_load_in_progress_shows_as_loading_unless_it_got_further():
    assert model_cards(registry(statuses={"a": None}, entry=SMALL), ["m"])[0]["status"] == "loading"
    assert model_cards(registry(statuses={"a": S.DOWNLOADING}, entry=SMALL), ["m"])[0]["status"] == "downloading"
    assert model_cards(registry(statuses={"a": S.LOADED}, entry=SMALL), ["m"])[0]["status"] == "loaded"


def test_the_table_orders_every_status():
    assert PRECEDENCE[0] == CardStatus.LOADED and PRECEDENCE[-1] == CardStatus.UNAVAILABLE
    assert set(PRECEDENCE) == set(CardStatus)
    assert "download" not in {str(s) for s in CardStatus}  # renamed needs_download: next to "downloading"


GANG = ModelEntry(id="big", harness="vllm", vram_mb=24000, hosts=2)  # 12000 MiB per rank, no host holds 24000


@pytest.mark.parametrize(
    ("neurons", "multi_host", "expected"),
    [
        (["a", "b"], True, ("available", None)),
        (["a", "b"], False, ("unavailable", "no_placement")),  # they do not join gangs
        (["a"], True, ("unavailable", "no_placement")),  # one neuron for two ranks
    ],
)
def test_a_gang_model_is_available_when_enough_neurons_hold_a_rank(neurons, multi_host, expected):
    card = model_cards(registry(statuses=dict.fromkeys(neurons), entry=GANG, multi_host=multi_host), [])[0]
    assert (card["status"], card.get("unavailable_kind")) == expected
    assert card["hosts"] == 2 and card["members"] == []
