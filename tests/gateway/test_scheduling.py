"""The scheduler's policy: a pure function, tested by tables (waiters + fleet + time -> decision)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from helexa.gateway.placement import DeviceView, Need, NeuronView, ResidentModel
from helexa.gateway.scheduling import (
    BATCH,
    INTERACTIVE,
    NORMAL,
    Decision,
    Fleet,
    Load,
    Policy,
    Waiter,
    decide,
    idle_unloads,
)

H = frozenset({"vllm"})
SWAP, FIFO = Policy(max_wait=30, hold=120), Policy(mode="fifo", max_wait=30, hold=120)


def need(model: str, vram: int = 8000, **kw) -> Need:
    return Need(model, "vllm", vram_mb=vram, **kw)


def neuron(name: str, *resident: ResidentModel, total: int = 10000) -> NeuronView:
    used = sum(r.vram_mb for r in resident)
    return NeuronView(name, H, (DeviceView(0, total, total - used),), resident=resident)


def res(model: str, in_flight: int = 0, last_used: float = 0.0, vram: int = 8000, **kw) -> ResidentModel:
    return ResidentModel(model, vram, devices=(0,), in_flight=in_flight, last_used=last_used, **kw)


def fleet(*neurons: NeuronView, needs=("a", "b", "c"), **kw) -> Fleet:
    serving: dict[str, set[str]] = {}
    for view in neurons:
        for model in view.resident:
            serving.setdefault(model.id, set()).add(view.name)
    return Fleet(
        tuple(neurons),
        {m: frozenset(ns) for m, ns in serving.items()},
        needs={m: need(m) for m in needs},
        **kw,
    )


def w(
    ticket: int, model: str, arrived: float = 0.0, priority: int = NORMAL, key: str = "", preferred: str = ""
) -> Waiter:
    return Waiter(ticket, model, arrived, priority, key, preferred)


def gang_neuron(name: str, *resident: ResidentModel, total: int = 10000) -> NeuronView:
    """A neuron that joins gangs ([neuron] multi_host)."""
    return replace(neuron(name, *resident, total=total), multi_host=True)


# (name, waiters, fleet, now, policy, expected decision)
TABLE = [
    (
        "a waiter for a loaded, busy model goes at once; one for another waits (swap-aware: no drain yet)",
        [w(0, "b"), w(1, "a")],
        fleet(neuron("n1", res("a", in_flight=2))),
        10.0,
        SWAP,
        Decision(admit=((1, "n1"),)),
    ),
    (
        "fifo: the first waiter claims the capacity: 'a' drains and the later 'a' waiter stays behind it",
        [w(0, "b"), w(1, "a")],
        fleet(neuron("n1", res("a", in_flight=2))),
        10.0,
        FIFO,
        Decision(draining=frozenset({("n1", "a")})),
    ),
    (
        "every waiter for a model is served by one load; idle victims go",
        [w(0, "b"), w(1, "b"), w(2, "b")],
        fleet(neuron("n1", res("a"))),
        1.0,
        SWAP,
        Decision(loads=(Load("b", "n1", ("a",)),), draining=frozenset({("n1", "a")})),
    ),
    (
        "a model that fits is loaded without evicting anything",
        [w(0, "b")],
        fleet(neuron("n1", total=20000)),
        1.0,
        SWAP,
        Decision(loads=(Load("b", "n1"),)),
    ),
    (
        "starvation bound: at max_wait the waiter is overdue and drains the busy model ahead of new requests",
        [w(0, "b", arrived=0.0), w(1, "a", arrived=29.0)],
        fleet(neuron("n1", res("a", in_flight=1))),
        30.0,
        SWAP,
        Decision(draining=frozenset({("n1", "a")})),
    ),
    (
        "just before max_wait it still waits and the loaded model keeps serving",
        [w(0, "b", arrived=0.0), w(1, "a", arrived=29.0)],
        fleet(neuron("n1", res("a", in_flight=1))),
        29.9,
        SWAP,
        Decision(admit=((1, "n1"),)),
    ),
    (
        "an overdue waiter's victim that has drained is swapped out; it takes no new requests meanwhile",
        [w(0, "b", arrived=0.0), w(1, "a", arrived=31.0)],
        fleet(neuron("n1", res("a"))),
        31.0,
        SWAP,
        Decision(loads=(Load("b", "n1", ("a",)),), draining=frozenset({("n1", "a")})),
    ),
    (
        "a model on several neurons: only the replica that makes room drains; its requests go to the other",
        [w(0, "b", arrived=0.0), w(1, "a", arrived=40.0)],
        fleet(neuron("n1", res("a", in_flight=1)), neuron("n2", res("a", in_flight=1))),
        40.0,
        SWAP,
        Decision(admit=((1, "n2"),), draining=frozenset({("n1", "a")})),
    ),
    (
        "pinned models are never evicted: with nothing else there, the waiter is refused at once",
        [w(0, "b"), w(1, "b")],
        fleet(neuron("n1", res("a", pinned=True))),
        1.0,
        SWAP,
        Decision(refuse={0: "no_room", 1: "no_room"}),
    ),
    (
        "a model no neuron could hold is refused as no_placement",
        [w(0, "c")],
        Fleet((neuron("n1"),), needs={"c": need("c", 50000)}),
        1.0,
        SWAP,
        Decision(refuse={0: "no_placement"}),
    ),
    (
        "a sleeping model is woken where it sleeps, nothing evicted",
        [w(0, "b")],
        fleet(neuron("n1", res("a")), neuron("n2"), sleeping={"b": ("n2",)}),
        1.0,
        SWAP,
        Decision(loads=(Load("b", "n2"),)),
    ),
    (
        "a model being loaded is never a victim; its waiters wait for it",
        [w(0, "a"), w(1, "c")],
        Fleet((neuron("n1", res("a")),), loading=frozenset({"a"}), needs={"a": need("a"), "c": need("c")}),
        1.0,
        SWAP,
        Decision(),
    ),
    (
        "a model not in the catalogue that is no longer served is refused as not found",
        [w(0, "gone")],
        fleet(neuron("n1")),
        1.0,
        SWAP,
        Decision(refuse={0: "not_found"}),
    ),
    (
        "a gang is placed here too: its members in rank order (the most room first), the victims on each",
        [w(0, "g")],
        Fleet(
            (gang_neuron("n1", res("x", vram=6000)), gang_neuron("n2"), gang_neuron("n3", res("y", vram=9000))),
            needs={"g": need("g", 16000, hosts=2)},
        ),
        1.0,
        SWAP,
        Decision(
            loads=(Load("g", "n2", (), ("n2", "n1"), ((), ("x",))),),
            draining=frozenset({("n1", "x")}),
        ),
    ),
    (
        "a sleeping gang is woken on its members, nothing evicted",
        [w(0, "g")],
        Fleet((gang_neuron("n1"), gang_neuron("n2")), sleeping={"g": ("n2", "n1")}, needs={"g": need("g", hosts=2)}),
        1.0,
        SWAP,
        Decision(loads=(Load("g", "n2", (), ("n2", "n1"), ((), ())),)),
    ),
    (
        "a gang that fewer neurons than it spans could ever hold is refused as no_placement",
        [w(0, "g")],
        Fleet((gang_neuron("n1"), neuron("n2")), needs={"g": need("g", hosts=2)}),
        1.0,
        SWAP,
        Decision(refuse={0: "no_placement"}),
    ),
    (
        "a gang whose only possible members hold pinned models is refused as no_room, not left to wait",
        [w(0, "g")],
        Fleet(
            (gang_neuron("n1", res("p", vram=9000, pinned=True)), gang_neuron("n2", res("q", vram=9000, pinned=True))),
            needs={"g": need("g", 16000, hosts=2)},
        ),
        1.0,
        SWAP,
        Decision(refuse={0: "no_room"}),
    ),
    (
        "a request goes to the least busy replica, or to its conversation's unless that one is much busier",
        [w(0, "a"), w(1, "a", preferred="n2"), w(2, "a", preferred="n1")],
        fleet(neuron("n1", res("a")), neuron("n2", res("a")), busy={("n1", "a"): 6, ("n2", "a"): 1}),
        1.0,
        SWAP,
        Decision(admit=((0, "n2"), (1, "n2"), (2, "n2"))),
    ),
]


@pytest.mark.parametrize(("name", "waiters", "fleet_", "now", "policy", "expected"), TABLE, ids=[t[0] for t in TABLE])
def test_policy_table(name, waiters, fleet_, now, policy, expected):
    assert decide(waiters, fleet_, now, policy) == expected


# ------------------------------------------------------------------------------------------------ priorities


def test_interactive_waiters_go_before_batch_for_the_same_capacity():
    f = fleet(neuron("n1", res("a")))
    got = decide([w(0, "b", priority=BATCH), w(1, "c", priority=INTERACTIVE)], f, 1.0, SWAP)
    assert got.loads == (Load("c", "n1", ("a",)),)
    fifo = decide([w(0, "b", priority=BATCH), w(1, "c", priority=INTERACTIVE)], f, 1.0, FIFO)
    assert fifo.loads == (Load("c", "n1", ("a",)),)  # priority orders fifo too; arrival order within it


def test_batch_never_evicts_a_model_interactive_requests_use():
    used = {("n1", "a"): {INTERACTIVE: 100.0}}
    f = fleet(neuron("n1", res("a")), used=used)
    # idle, but an interactive request used it 20 s ago: a batch request waits (even overdue) ...
    assert decide([w(0, "b", priority=BATCH)], f, 120.0, SWAP) == Decision()
    assert decide([w(0, "b", arrived=0.0, priority=BATCH)], f, 200.0, SWAP) == Decision()
    # ... a normal one does not (the hold protects from lower priorities only) ...
    assert decide([w(0, "b", priority=INTERACTIVE)], f, 120.0, SWAP).loads == (Load("b", "n1", ("a",)),)
    # ... and once the hold lapsed, batch may evict it
    assert decide([w(0, "b", priority=BATCH)], f, 221.0, SWAP).loads == (Load("b", "n1", ("a",)),)


def test_batch_waiting_for_a_model_protects_nothing_but_interactive_waiting_does():
    f = fleet(neuron("n1", res("a", in_flight=1)))
    # an interactive request waits for 'a' (admitted); an overdue batch request for 'b' must not drain 'a'
    got = decide([w(0, "b", arrived=0.0, priority=BATCH), w(1, "a", arrived=50, priority=INTERACTIVE)], f, 60.0, SWAP)
    assert got == Decision(admit=((1, "n1"),))
    # the same with a normal waiter for 'b': it drains 'a' (same priority as nothing that uses 'a' above it)
    got = decide([w(0, "b", arrived=0.0), w(1, "a", arrived=50, priority=BATCH)], f, 60.0, SWAP)
    assert got == Decision(draining=frozenset({("n1", "a")}))


def test_a_batch_request_is_not_refused_for_a_hold_that_will_lapse():
    f = fleet(neuron("n1", res("a")), used={("n1", "a"): {INTERACTIVE: 100.0}})
    assert decide([w(0, "b", priority=BATCH)], f, 101.0, SWAP).refuse == {}


# ------------------------------------------------------------------------------------------------ fairness


def test_turns_over_keys_one_key_cannot_take_every_swap_first():
    # three neurons, each with an idle model that can go: three loads, in the order they are planned
    f = fleet(neuron("n1", res("x1")), neuron("n2", res("x2")), neuron("n3", res("x3")), needs=("p", "q", "r", "x1"))
    # key k1 asked for p then q (older tickets); k2 for r once
    waiters = [w(0, "p", key="k1"), w(1, "q", key="k1"), w(2, "q", key="k1"), w(3, "r", key="k2")]
    assert [load.model for load in decide(waiters, f, 1.0, SWAP).loads] == ["p", "r", "q"]


def test_a_thousand_requests_of_one_key_count_as_one_key():
    f = fleet(neuron("n1", res("a")), needs=("b", "c"))
    waiters = [w(i, "b", key="greedy") for i in range(1000)]
    waiters += [w(1000, "c", key="k1"), w(1001, "c", key="k2")]  # two keys want c, later
    assert decide(waiters, f, 1.0, SWAP).loads == (Load("c", "n1", ("a",)),)


# ------------------------------------------------------------------------------------------------ fewer swaps


def simulate(policy: Policy, trace: list[tuple[float, str]], service: float = 1.0, load: float = 5.0) -> int:
    """A one-slot neuron serving ``trace`` (arrival time, model) with the policy: returns the swaps made.

    An event simulation: each step runs the policy, starts what it says, advances to the next event.
    """
    now, swaps, pending = 0.0, 0, list(enumerate(trace))
    resident: str | None = None
    busy_until: list[float] = []  # requests in flight on the resident model
    loading_until: float | None = None
    loading_model = ""
    waiting: list[Waiter] = []
    while pending or waiting or busy_until or loading_until is not None:
        events = [t for t in busy_until] + ([loading_until] if loading_until is not None else [])
        if pending:
            events.append(pending[0][1][0])
        now = max(now, min(events))
        while pending and pending[0][1][0] <= now:
            ticket, (at, model) = pending.pop(0)
            waiting.append(Waiter(ticket, model, at))
        busy_until = [t for t in busy_until if t > now]
        if loading_until is not None and loading_until <= now:
            resident, loading_until = loading_model, None
        residents = () if resident is None else (res(resident, in_flight=len(busy_until)),)
        if loading_until is not None:
            residents = (res(loading_model),)
        f = Fleet(
            (neuron("n1", *residents),),
            {resident: frozenset({"n1"})} if resident and loading_until is None else {},
            frozenset({loading_model}) if loading_until is not None else frozenset(),
            needs={m: need(m) for m in "abc"},
        )
        decision = decide(waiting, f, now, policy)
        admitted = {ticket for ticket, _ in decision.admit}
        busy_until += [now + service for _ in admitted]
        waiting = [x for x in waiting if x.ticket not in admitted]
        for planned in decision.loads:
            swaps += bool(planned.victims)
            loading_model, loading_until, resident = planned.model, now + load, None
    return swaps


def test_swap_aware_swaps_far_less_than_fifo_on_a_mixed_trace():
    import random

    rng = random.Random(7)
    t, trace = 0.0, []
    for _ in range(120):
        t += rng.expovariate(1.0)
        trace.append((t, rng.choice("abc")))
    fifo, aware = simulate(FIFO, trace), simulate(SWAP, trace)
    assert aware * 2 <= fifo, (fifo, aware)


# ------------------------------------------------------------------------------------------------ idle unloads


def test_idle_unloads_table():
    views = [
        neuron("n1", res("old", last_used=0.0), res("busy", in_flight=1, last_used=0.0, vram=1)),
        neuron("n2", res("pinned", last_used=0.0, pinned=True), res("fresh", last_used=95.0, vram=1)),
        neuron("n3", res("never", last_used=0.0), res("waited", last_used=0.0, vram=1)),
    ]
    limits = {"old": 60, "busy": 60, "pinned": 60, "fresh": 60, "never": 0, "waited": 60}
    assert idle_unloads(views, limits, 100.0, skip=frozenset({"waited"})) == [("n1", "old")]
    assert idle_unloads(views, limits, 160.0, skip=frozenset({"waited"})) == [("n1", "old"), ("n2", "fresh")]
    assert idle_unloads(views, {}, 1e9) == []
