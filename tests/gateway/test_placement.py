"""Placement, eviction and replica choice: pure functions, plain tests."""

from __future__ import annotations

from helexa.gateway.placement import (
    DeviceView,
    EvictionPlan,
    Need,
    NeuronView,
    ResidentModel,
    could_fit,
    pick_replica,
    place,
    plan_eviction,
)

H = frozenset({"vllm", "llamacpp"})


def gpu_neuron(name, *free, total=24000, resident=(), harnesses=H):
    devices = tuple(DeviceView(i, total, f) for i, f in enumerate(free))
    return NeuronView(name, harnesses, devices, resident=tuple(resident))


def test_place_prefers_pinned_then_most_free():
    need = Need("m", "vllm", vram_mb=8000, pinned_on=frozenset({"b"}))
    a, b = gpu_neuron("a", 20000), gpu_neuron("b", 9000)
    assert place(need, [a, b]) == "b"
    assert place(Need("m", "vllm", vram_mb=8000), [a, b]) == "a"


def test_place_respects_harness_device_count_and_device_size():
    assert place(Need("m", "sglang", vram_mb=1), [gpu_neuron("a", 20000)]) is None
    two = Need("m", "vllm", vram_mb=30000, devices=2)
    assert place(two, [gpu_neuron("a", 20000)]) is None
    assert place(two, [gpu_neuron("a", 20000, 16000)]) == "a"
    big_cards = Need("m", "vllm", vram_mb=1000, min_device_vram_mb=32000)
    assert place(big_cards, [gpu_neuron("a", 20000)]) is None


def test_cpu_neurons_use_ram():
    cpu = NeuronView("cpu", H, ram_total_mb=16000, ram_free_mb=3000)
    assert place(Need("m", "llamacpp", vram_mb=2000), [cpu]) == "cpu"
    assert place(Need("m", "llamacpp", vram_mb=4000), [cpu]) is None
    assert could_fit(Need("m", "llamacpp", vram_mb=4000), cpu)
    assert not could_fit(Need("m", "llamacpp", vram_mb=10, devices=2), cpu)


def resident(id_, vram, last_used, **kw):
    return ResidentModel(id_, vram, devices=(0,), last_used=last_used, **kw)


def test_lru_evicts_least_recently_used_first_and_only_as_many_as_needed():
    n = gpu_neuron("a", 2000, resident=[resident("old", 6000, 1), resident("mid", 6000, 2), resident("new", 6000, 3)])
    assert plan_eviction(Need("m", "vllm", vram_mb=7000), [n]) == EvictionPlan("a", ("old",))
    assert plan_eviction(Need("m", "vllm", vram_mb=13000), [n]) == EvictionPlan("a", ("old", "mid"))


def test_pinned_and_busy_models_are_never_evicted():
    n = gpu_neuron(
        "a", 0, resident=[resident("pinned", 12000, 1, pinned=True), resident("busy", 12000, 2, in_flight=1)]
    )
    assert plan_eviction(Need("m", "vllm", vram_mb=1000), [n]) is None
    n2 = gpu_neuron("a", 0, resident=[resident("pinned", 12000, 1, pinned=True), resident("idle", 12000, 5)])
    assert plan_eviction(Need("m", "vllm", vram_mb=1000), [n2]) == EvictionPlan("a", ("idle",))


def test_priority_strategy_evicts_low_priority_first_and_never_for_a_lesser_model():
    n = gpu_neuron("a", 0, resident=[resident("hi", 12000, 1, priority=10), resident("lo", 12000, 9, priority=1)])
    assert plan_eviction(Need("m", "vllm", vram_mb=1000, priority=5), [n], "priority") == EvictionPlan("a", ("lo",))
    assert plan_eviction(Need("m", "vllm", vram_mb=1000, priority=5), [n], "lru") == EvictionPlan("a", ("hi",))
    assert plan_eviction(Need("m", "vllm", vram_mb=20000, priority=5), [n], "priority") is None
    assert plan_eviction(Need("m", "vllm", vram_mb=1000, priority=0), [n], "priority") is None


def test_eviction_prefers_the_neuron_with_fewest_victims():
    a = gpu_neuron("a", 0, resident=[resident("x", 6000, 1), resident("y", 6000, 2)])
    b = gpu_neuron("b", 6000, resident=[resident("z", 6000, 1)])
    assert plan_eviction(Need("m", "vllm", vram_mb=10000), [a, b]) == EvictionPlan("b", ("z",))


def test_nothing_can_ever_fit():
    assert plan_eviction(Need("m", "vllm", vram_mb=99999), [gpu_neuron("a", 0)]) is None


def test_pick_replica_takes_the_least_busy():
    assert pick_replica([("a", 3), ("b", 1), ("c", 1)]) == "b"


def test_prefix_affinity_keeps_a_conversation_on_its_replica_unless_much_busier():
    loads = [("a", 0), ("b", 2)]
    assert pick_replica(loads) == "a"
    assert pick_replica(loads, preferred="b") == "b"  # two more in flight: the cached prefix is worth it
    assert pick_replica([("a", 0), ("b", 3)], preferred="b") == "a"  # much busier: least busy wins
    assert pick_replica([("a", 0), ("b", 3)], preferred="b", slack=3) == "b"
    assert pick_replica(loads, preferred="gone") == "a"  # the remembered replica no longer has it
