"""Pure decisions about where models go: placement, eviction plans and replica choice. No I/O, no clocks.

The inputs are snapshots (``NeuronView``) built by the registry; the lifecycle module acts on the answers.
Memory is counted per device on GPU neurons and as host RAM on CPU-only neurons. A model's need is
``vram_mb`` split evenly over ``max(min_devices, tensor_parallel)`` devices, each with at least
``min_device_vram_mb`` in total. An unknown need (``vram_mb = 0``) fits any neuron that has the harness; the
neuron's own preflight has the last word either way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from helexa.wire.neuron import AUTO_HARNESS

__all__ = [
    "DeviceView",
    "EvictionPlan",
    "GangPlan",
    "Need",
    "NeuronView",
    "ResidentModel",
    "could_fit",
    "fits",
    "fits_without",
    "pick_replica",
    "place",
    "place_gang",
    "plan_eviction",
]


@dataclass(frozen=True, slots=True)
class DeviceView:
    """One GPU: its index, total and free memory in MiB."""

    index: int
    total_mb: int
    free_mb: int


@dataclass(frozen=True, slots=True)
class ResidentModel:
    """A model loaded on a neuron, as eviction sees it."""

    id: str
    vram_mb: int
    devices: tuple[int, ...] = ()
    in_flight: int = 0
    last_used: float = 0.0
    priority: int = 0
    pinned: bool = False


@dataclass(frozen=True, slots=True)
class NeuronView:
    """A neuron as placement sees it. ``devices`` empty = CPU-only (memory is ``ram_*``)."""

    name: str
    harnesses: frozenset[str]
    devices: tuple[DeviceView, ...] = ()
    ram_total_mb: int = 0
    ram_free_mb: int = 0
    resident: tuple[ResidentModel, ...] = ()
    group: str = ""  # [[neurons]] group: neurons close on the network
    multi_host: bool = False  # joins gangs ([neuron] multi_host)


@dataclass(frozen=True, slots=True)
class Need:
    """What a catalogue model needs."""

    model_id: str
    harness: str
    vram_mb: int = 0
    devices: int = 1
    min_device_vram_mb: int = 0
    pinned_on: frozenset[str] = field(default_factory=frozenset)
    priority: int = 0
    hosts: int = 1  # > 1: a gang, one rank per neuron, each holding vram_mb / hosts

    @property
    def per_device_mb(self) -> int:
        """Memory needed on each device."""
        return -(-self.vram_mb // self.devices)

    def rank(self) -> Need:
        """What one member of a gang needs on its neuron: an even share of the memory, the same devices."""
        return replace(self, vram_mb=-(-self.vram_mb // self.hosts), hosts=1)


@dataclass(frozen=True, slots=True)
class EvictionPlan:
    """Unload ``victims`` (in order) on ``neuron``, then ``need`` fits there."""

    neuron: str
    victims: tuple[str, ...]


def _fits(need: Need, neuron: NeuronView, *, free: dict[int, int], ram_free: int, use_total: bool) -> bool:
    if need.harness not in neuron.harnesses and not (need.harness == AUTO_HARNESS and neuron.harnesses):
        return False
    if not neuron.devices:
        if need.devices > 1:
            return False
        return need.vram_mb <= (neuron.ram_total_mb if use_total else ram_free)
    suitable = [
        d
        for d in neuron.devices
        if d.total_mb >= need.min_device_vram_mb
        and (d.total_mb if use_total else free.get(d.index, d.free_mb)) >= need.per_device_mb
    ]
    return len(suitable) >= need.devices


def fits(need: Need, neuron: NeuronView) -> bool:
    """``need`` fits on ``neuron`` now, in its free memory."""
    return _fits(need, neuron, free={}, ram_free=neuron.ram_free_mb, use_total=False)


def fits_without(need: Need, neuron: NeuronView, victims: Iterable[str]) -> bool:
    """``need`` fits on ``neuron`` once ``victims`` are unloaded — each of them resident there, idle and not pinned
    (else False: a plan that counted on it no longer holds)."""
    resident = {m.id: m for m in neuron.resident}
    free = {d.index: d.free_mb for d in neuron.devices}
    ram_free = neuron.ram_free_mb
    for victim in victims:
        model = resident.get(victim)
        if model is None or model.in_flight or model.pinned:
            return False
        ram_free = _release(model, free, ram_free)
    return _fits(need, neuron, free=free, ram_free=ram_free, use_total=False)


def _release(model: ResidentModel, free: dict[int, int], ram_free: int) -> int:
    """Count ``model``'s memory as free again: its share on each of its devices (``free``, updated), else its RAM;
    returns the free RAM."""
    if not model.devices:
        return ram_free + model.vram_mb
    share = model.vram_mb // len(model.devices)
    for index in model.devices:
        free[index] = free.get(index, 0) + share
    return ram_free


def could_fit(need: Need, neuron: NeuronView) -> bool:
    """``need`` would fit on ``neuron`` if everything there were unloaded (a valid placement at all)."""
    return _fits(need, neuron, free={}, ram_free=neuron.ram_free_mb, use_total=True)


def _free_total(need: Need, neuron: NeuronView) -> int:
    if not neuron.devices:
        return neuron.ram_free_mb
    return sum(sorted((d.free_mb for d in neuron.devices), reverse=True)[: need.devices])


def place(need: Need, neurons: Iterable[NeuronView]) -> str | None:
    """The neuron to load ``need`` on without evicting anything: pinned neurons first, then most free memory."""
    candidates = [n for n in neurons if fits(need, n)]
    if not candidates:
        return None
    best = min(candidates, key=lambda n: (n.name not in need.pinned_on, -_free_total(need, n), n.name))
    return best.name


def _eviction_order(models: Iterable[ResidentModel], strategy: str) -> list[ResidentModel]:
    if strategy == "priority":
        return sorted(models, key=lambda m: (m.priority, m.last_used, m.id))
    return sorted(models, key=lambda m: (m.last_used, m.id))


def plan_eviction(need: Need, neurons: Iterable[NeuronView], strategy: str = "lru") -> EvictionPlan | None:
    """The cheapest set of models to unload so ``need`` fits somewhere; None when no set would do.

    Never evicts a model pinned on that neuron or one with requests in flight. Victims are taken in LRU order
    (``lru``) or lowest priority first, then LRU (``priority``); with ``priority``, a model is never evicted
    for a model of lower priority. Among neurons, pinned ones win, then fewer victims, then the name.
    """
    plans: list[tuple[tuple[bool, int, str], EvictionPlan]] = []
    for neuron in neurons:
        if not could_fit(need, neuron):
            continue
        evictable = [
            m
            for m in neuron.resident
            if not m.pinned and m.in_flight == 0 and (strategy != "priority" or m.priority <= need.priority)
        ]
        free = {d.index: d.free_mb for d in neuron.devices}
        ram_free = neuron.ram_free_mb
        victims: list[str] = []
        for model in _eviction_order(evictable, strategy):
            if _fits(need, neuron, free=free, ram_free=ram_free, use_total=False):
                break
            victims.append(model.id)
            ram_free = _release(model, free, ram_free)
        if not _fits(need, neuron, free=free, ram_free=ram_free, use_total=False):
            continue
        key = (neuron.name not in need.pinned_on, len(victims), neuron.name)
        plans.append((key, EvictionPlan(neuron.name, tuple(victims))))
    if not plans:
        return None
    return min(plans, key=lambda p: p[0])[1]


@dataclass(frozen=True, slots=True)
class GangPlan:
    """Load a gang on ``members`` (rank order: the head first), after unloading ``victims`` per member."""

    members: tuple[str, ...]
    victims: tuple[tuple[str, ...], ...]


def place_gang(need: Need, neurons: Iterable[NeuronView], strategy: str = "lru") -> GangPlan | None:
    """``need.hosts`` distinct neurons that can each hold one rank (``need.rank()``), all or none.

    Only neurons that join gangs (``multi_host``) count. Each candidate needs no eviction or the cheapest one
    :func:`plan_eviction` finds there (the same rules: nothing pinned there or busy, priorities). The members
    come from one ``group`` when a group has enough candidates (the group needing the fewest evictions, then
    the most free memory), else from all; within that, fewer victims and more free memory first. The head
    (rank 0, which serves the API) is the member with the most free memory. None when fewer than
    ``need.hosts`` neurons qualify.
    """
    share = need.rank()
    candidates: list[tuple[NeuronView, tuple[str, ...]]] = []
    for neuron in neurons:
        if not neuron.multi_host:
            continue
        if fits(share, neuron):
            candidates.append((neuron, ()))
        elif (plan := plan_eviction(share, [neuron], strategy)) is not None:
            candidates.append((neuron, plan.victims))
    if len(candidates) < need.hosts:
        return None

    def best(pool: list[tuple[NeuronView, tuple[str, ...]]]) -> list[tuple[NeuronView, tuple[str, ...]]]:
        ranked = sorted(
            pool, key=lambda c: (c[0].name not in need.pinned_on, len(c[1]), -_free_total(share, c[0]), c[0].name)
        )
        return ranked[: need.hosts]

    groups: dict[str, list[tuple[NeuronView, tuple[str, ...]]]] = {}
    for candidate in candidates:
        if candidate[0].group:
            groups.setdefault(candidate[0].group, []).append(candidate)
    choices = [best(pool) for pool in groups.values() if len(pool) >= need.hosts]
    if choices:
        chosen = min(
            choices,
            key=lambda c: (sum(len(v) for _, v in c), -sum(_free_total(share, n) for n, _ in c), c[0][0].group),
        )
    else:
        chosen = best(candidates)
    chosen.sort(key=lambda c: (-_free_total(share, c[0]), c[0].name))  # the head has the most room
    return GangPlan(tuple(n.name for n, _ in chosen), tuple(v for _, v in chosen))


AFFINITY_SLACK = 2  # how many more requests the replica with a conversation's prefix may have than the idlest


def pick_replica(
    candidates: Sequence[tuple[str, int]], preferred: str | None = None, slack: int = AFFINITY_SLACK
) -> str:
    """Of ``(neuron, requests in flight)`` pairs, the neuron with the fewest in flight (then by name).

    Prefix affinity: ``preferred`` — the replica that served this conversation last, whose engine still holds
    its prompt prefix in cache — wins unless it is much busier: more than ``slack`` requests above the idlest.
    Agents resend the whole conversation each turn, so a cache hit saves the whole prefill.
    """
    name, load = min(candidates, key=lambda c: (c[1], c[0]))
    if preferred is not None and preferred != name:
        for candidate, candidate_load in candidates:
            if candidate == preferred and candidate_load <= load + slack:
                return candidate
    return name
