"""Gang placement as a table: which neurons hold a model that spans several hosts, all or none (pure)."""

from __future__ import annotations

import pytest

from helexa.gateway.placement import DeviceView, GangPlan, Need, NeuronView, ResidentModel, place_gang

H = frozenset({"vllm"})


def gpu(name: str, free: int, *, total: int = 24000, group: str = "", multi_host: bool = True, resident=()):
    return NeuronView(
        name,
        H,
        (DeviceView(0, total, free),),
        resident=tuple(resident),
        group=group,
        multi_host=multi_host,
    )


def idle(model_id: str, vram_mb: int, last_used: float = 0.0, **kw) -> ResidentModel:
    return ResidentModel(model_id, vram_mb, devices=(0,), last_used=last_used, **kw)


BIG = Need("big", "vllm", vram_mb=40000, hosts=2)  # 20000 MiB per rank


@pytest.mark.parametrize(
    ("need", "neurons", "expected"),
    [
        pytest.param(
            BIG, [gpu("a", 24000), gpu("b", 22000)], GangPlan(("a", "b"), ((), ())), id="fits, head most free"
        ),
        pytest.param(
            BIG, [gpu("a", 21000), gpu("b", 23000)], GangPlan(("b", "a"), ((), ())), id="head is the roomiest"
        ),
        pytest.param(BIG, [gpu("a", 24000), gpu("b", 10000, total=16000)], None, id="one host too small: none"),
        pytest.param(BIG, [gpu("a", 24000)], None, id="one neuron for two ranks: none"),
        pytest.param(
            BIG, [gpu("a", 24000), gpu("b", 24000, multi_host=False)], None, id="a neuron that does not join gangs"
        ),
        pytest.param(
            Need("big", "vllm", vram_mb=40000, hosts=3),
            [gpu("a", 24000), gpu("b", 24000), gpu("c", 24000), gpu("d", 23000)],
            GangPlan(("a", "b", "c"), ((), (), ())),
            id="three of four, the roomiest",
        ),
        pytest.param(
            BIG,
            [gpu("a", 24000, group="x"), gpu("b", 23000, group="y"), gpu("c", 22000, group="y"), gpu("d", 23500)],
            GangPlan(("b", "c"), ((), ())),
            id="one group when a group can hold it all",
        ),
        pytest.param(
            BIG,
            [gpu("a", 24000, group="x"), gpu("b", 23000, group="y")],
            GangPlan(("a", "b"), ((), ())),
            id="across groups when none can",
        ),
        pytest.param(
            BIG,
            [
                gpu("a", 4000, resident=[idle("old", 20000, 1.0), idle("older", 20000, 0.5)], total=44000),
                gpu("b", 24000),
            ],
            GangPlan(("b", "a"), ((), ("older",))),
            id="evicts on a member, least recently used first",
        ),
        pytest.param(
            BIG,
            [gpu("a", 4000, resident=[idle("keep", 20000, pinned=True)]), gpu("b", 24000)],
            None,
            id="pinned models stay: none",
        ),
        pytest.param(
            BIG,
            [gpu("a", 4000, resident=[idle("busy", 20000, in_flight=2)]), gpu("b", 24000)],
            None,
            id="busy models stay: none",
        ),
        pytest.param(
            BIG,
            [gpu("a", 4000, resident=[idle("x", 20000)]), gpu("b", 24000), gpu("c", 21000)],
            GangPlan(("b", "c"), ((), ())),
            id="no eviction beats eviction",
        ),
    ],
)
def test_gang_placement(need, neurons, expected):
    assert place_gang(need, neurons) == expected


def test_priority_strategy_never_evicts_a_more_important_model_for_a_gang():
    neurons = [gpu("a", 4000, resident=[idle("vip", 20000, priority=9)]), gpu("b", 24000)]
    assert place_gang(BIG, neurons, "priority") is None
    assert place_gang(BIG, neurons, "lru") == GangPlan(("b", "a"), ((), ("vip",)))


def test_pinned_neurons_are_preferred_members():
    need = Need("big", "vllm", vram_mb=40000, hosts=2, pinned_on=frozenset({"c"}))
    plan = place_gang(need, [gpu("a", 24000), gpu("b", 24000), gpu("c", 21000)])
    assert plan is not None and "c" in plan.members


def test_cpu_neurons_hold_ranks_in_ram():
    cpu = [NeuronView(n, H, ram_total_mb=16000, ram_free_mb=9000, multi_host=True) for n in ("a", "b")]
    assert place_gang(Need("big", "vllm", vram_mb=16000, hosts=2), cpu) == GangPlan(("a", "b"), ((), ()))
    assert place_gang(Need("big", "vllm", vram_mb=20000, hosts=2), cpu) is None


def test_the_rank_need_is_an_even_share():
    assert Need("big", "vllm", vram_mb=40001, hosts=2).rank().vram_mb == 20001
    assert Need("big", "vllm", vram_mb=40000, hosts=2, devices=2).rank().per_device_mb == 10000
