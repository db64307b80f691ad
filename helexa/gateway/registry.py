"""What the gateway knows of the fleet: neurons, what each has loaded, and the catalogue. State, no I/O.

Neurons are the source of truth for what is loaded; the poller copies their ``/models`` here
(:meth:`NeuronState.reported`). Between polls the gateway records what its own actions did — a load begun, ended,
an unload — through one door, :meth:`NeuronState.move`, checked against :data:`MOVES` (the neuron's vocabulary:
``loading``, ``loaded``, ``sleeping``; ``None`` = gone). The gateway adds only what neurons cannot know: requests
in flight through this gateway and when each model was last used (for LRU), and load/unload cycles per neuron
(for ``full_stop_after_unloads``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgspec

from helexa.config import ModelEntry, NeuronRef
from helexa.gateway.placement import DeviceView, Need, NeuronView, ResidentModel
from helexa.wire.neuron import RESIDENT, Discovery, ModelInfo, ModelStatus, NeuronHealth, RankSpec

__all__ = ["MOVES", "Gang", "InvalidMove", "Member", "NeuronState", "Registry"]

_S = ModelStatus
#: What the gateway's own actions may change a model's state to between polls, by its state now (``None``: the
#: neuron does not list it). A load's answer may come before the gateway saw the load begin (``None -> loaded``);
#: anything may go (an unload, a failed load).
MOVES: dict[ModelStatus | None, frozenset[ModelStatus | None]] = {
    None: frozenset({_S.LOADING, _S.LOADED, None}),
    _S.UNLOADED: frozenset({_S.LOADING, _S.LOADED, None}),
    _S.FAILED: frozenset({_S.LOADING, _S.LOADED, None}),
    _S.DOWNLOADING: frozenset({_S.LOADING, _S.LOADED, None}),
    _S.LOADING: frozenset({_S.LOADING, _S.LOADED, None}),
    _S.LOADED: frozenset({_S.LOADED, _S.SLEEPING, None}),
    _S.SLEEPING: frozenset({_S.LOADING, _S.LOADED, _S.SLEEPING, None}),
}


class InvalidMove(RuntimeError):
    """A change of a model's state that :data:`MOVES` does not have (a bug in the caller)."""


@dataclass
class NeuronState:
    """One neuron as last seen."""

    ref: NeuronRef
    healthy: bool = False
    discovery: Discovery | None = None
    health: NeuronHealth | None = None
    models: dict[str, ModelInfo] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)
    #: model -> requests other gateways of the cluster have in flight here (the leader's, from their reports)
    peer_in_flight: dict[str, int] = field(default_factory=dict)
    last_used: dict[str, float] = field(default_factory=dict)
    #: (model, priority rank) -> when a request of that priority last began or ended here (the scheduler's clock)
    used_by: dict[tuple[str, int], float] = field(default_factory=dict)
    last_error: str = ""
    failures: int = 0
    cycles: int = 0
    polled: bool = False
    polls: int = 0  # polls so far, answered or not
    #: How to end each request in flight through this neuron (registered by the proxy while it waits).
    aborts: set[Callable[[], None]] = field(default_factory=set)
    #: Why a request could not be opened here since the last poll ("" = nothing): routing prefers other replicas
    suspect: str = ""
    #: Set to have the poller check this neuron now rather than at its next interval.
    probe: asyncio.Event = field(default_factory=asyncio.Event)

    def suspected(self, reason: str) -> None:
        """A request could not be opened here (no answer, or none in time). One request's word does not take a
        neuron out for everyone: it stays healthy and listed, routing prefers other replicas, and the poller
        checks it now — a poll without an answer marks it down, an answer clears the suspicion."""
        self.suspect = reason
        self.probe.set()

    def move(self, model_id: str, to: ModelStatus | None, *, harness: str = "", **fields: object) -> None:
        """The one door for the gateway's own changes to what this neuron holds (the poll replaces them all): set
        ``model_id``'s status to ``to`` (``None``: gone, its last use forgotten), with ``fields`` of its
        :class:`ModelInfo` (``rank``, ``loaded_at``, …).

        :raises InvalidMove: :data:`MOVES` has no such change.
        """
        info = self.models.get(model_id)
        now = info.status if info is not None else None
        if to not in MOVES[now]:
            raise InvalidMove(f"model {model_id!r} on neuron {self.name} cannot go from {now} to {to}")
        if to is None:
            self.models.pop(model_id, None)
            self.last_used.pop(model_id, None)
            return
        if info is None:
            self.models[model_id] = ModelInfo(id=model_id, harness=harness, status=to, **fields)  # type: ignore[arg-type]
        else:
            self.models[model_id] = msgspec.structs.replace(info, status=to, **fields)

    def reported(self, models: Iterable[ModelInfo]) -> None:
        """What the neuron itself says it holds (a poll's ``/models``): replaces everything the gateway noted."""
        self.models = {m.id: m for m in models}

    def mark_down(self, reason: str) -> None:
        """The neuron stopped answering: unhealthy, and every request in flight through it is ended now —
        one still waiting for the neuron's answer fails over to another replica, a stream gets its final
        error event — instead of hanging for as long as the neuron does."""
        self.healthy, self.last_error = False, reason
        aborts, self.aborts = self.aborts, set()
        for abort in aborts:
            abort()

    @property
    def name(self) -> str:
        """The neuron's configured name."""
        return self.ref.name

    def loaded(self, model_id: str) -> bool:
        """``model_id`` is loaded here (as of the last poll or load)."""
        info = self.models.get(model_id)
        return info is not None and info.status == ModelStatus.LOADED

    def rank(self, model_id: str) -> RankSpec | None:
        """The gang member ``model_id`` runs as here (None: alone, or not here)."""
        info = self.models.get(model_id)
        return info.rank if info is not None else None


@dataclass(frozen=True)
class Member:
    """One neuron's part in a gang, as last seen."""

    neuron: NeuronState
    info: ModelInfo

    @property
    def rank(self) -> RankSpec:
        """Its rank (always set: members are the models that carry one)."""
        assert self.info.rank is not None
        return self.info.rank


@dataclass(frozen=True)
class Gang:
    """The members of one gang of a model that the neurons report, by rank."""

    model_id: str
    gang: str
    size: int
    members: tuple[Member, ...]

    @property
    def complete(self) -> bool:
        """Every rank is there, loaded, on a healthy neuron: the head may serve."""
        ranks = {m.rank.rank for m in self.members if m.neuron.healthy and m.info.status == ModelStatus.LOADED}
        return ranks == set(range(self.size))

    @property
    def sleeping(self) -> bool:
        """Every rank is there and asleep (a load wakes the gang through its head)."""
        ranks = {m.rank.rank for m in self.members if m.neuron.healthy and m.info.status == ModelStatus.SLEEPING}
        return ranks == set(range(self.size))

    @property
    def head(self) -> Member | None:
        """Rank 0's member, if it is there."""
        return next((m for m in self.members if m.rank.rank == 0), None)


class Registry:
    """The fleet and the catalogue, by name."""

    def __init__(self, refs: Iterable[NeuronRef], catalogue: Iterable[ModelEntry]) -> None:
        self.neurons: dict[str, NeuronState] = {ref.name: NeuronState(ref) for ref in refs}
        #: Set once every neuron has been polled at least once (answered or not): routing waits for it, so a
        #: request that arrives while the gateway starts does not see an empty fleet.
        self.first_round = asyncio.Event()
        if not self.neurons:
            self.first_round.set()
        self.entries: list[ModelEntry] = list(catalogue)
        #: model id -> the context one request may use, as its engines last said (kept after an unload)
        self.context_lengths: dict[str, int] = {}
        self.catalogue: dict[str, ModelEntry] = {}
        for entry in self.entries:
            for name in (entry.id, *entry.aliases):
                self.catalogue[name] = entry

    def mark_polled(self, state: NeuronState) -> None:
        """Record that ``state`` has been polled (and the context lengths its engines report); the first
        round ends when all have."""
        state.polled = True
        state.polls += 1
        for model_id, info in state.models.items():
            if info.context_length:
                self.context_lengths[model_id] = info.context_length
        if all(n.polled for n in self.neurons.values()):
            self.first_round.set()

    def resolve(self, name: str) -> str:
        """The canonical id for ``name`` (an id or a catalogue alias)."""
        entry = self.catalogue.get(name)
        return entry.id if entry is not None else name

    def replicas(self, model_id: str) -> list[NeuronState]:
        """Healthy neurons that serve ``model_id``: where it is loaded alone, or the heads of complete gangs."""
        out = []
        for n in self.neurons.values():
            if not n.healthy or not n.loaded(model_id):
                continue
            rank = n.rank(model_id)
            if rank is None or (rank.head and self.gang(model_id, rank.gang).complete):
                out.append(n)
        return out

    def gangs(self, model_id: str) -> list[Gang]:
        """Every gang of ``model_id`` some neuron reports a member of (healthy or not), by gang id."""
        found: dict[str, list[Member]] = {}
        for state in self.neurons.values():
            info = state.models.get(model_id)
            if info is not None and info.rank is not None and info.status != ModelStatus.UNLOADED:
                found.setdefault(info.rank.gang, []).append(Member(state, info))
        return [
            Gang(model_id, gang, members[0].rank.size, tuple(sorted(members, key=lambda m: m.rank.rank)))
            for gang, members in sorted(found.items())
        ]

    def gang(self, model_id: str, gang: str) -> Gang:
        """The gang called ``gang`` of ``model_id`` (no members when nobody reports it)."""
        return next((g for g in self.gangs(model_id) if g.gang == gang), Gang(model_id, gang, 0, ()))

    def holders(self, model_id: str) -> list[str]:
        """Neurons that report ``model_id`` loaded as of their last answer, healthy or not."""
        return [n.name for n in self.neurons.values() if n.loaded(model_id)]

    def known(self, model_id: str) -> bool:
        """In the catalogue, or loaded (or loading) on some healthy neuron."""
        return model_id in self.catalogue or any(n.healthy and model_id in n.models for n in self.neurons.values())

    def need(self, entry: ModelEntry) -> Need:
        """What ``entry`` needs, for placement."""
        return Need(
            model_id=entry.id,
            harness=entry.harness,
            vram_mb=entry.vram_mb,
            devices=max(entry.min_devices, entry.tensor_parallel),
            min_device_vram_mb=entry.min_device_vram_mb,
            pinned_on=frozenset(entry.pinned_on),
            priority=entry.priority,
            hosts=entry.hosts,
        )

    def views(self) -> list[NeuronView]:
        """Snapshots of the healthy neurons for the placement functions."""
        return [self._view(n) for n in self.neurons.values() if n.healthy and n.discovery is not None]

    def _view(self, state: NeuronState) -> NeuronView:
        assert state.discovery is not None
        free = {h.index: h.vram_free_mb for h in (state.health.devices if state.health else [])}
        devices = tuple(DeviceView(d.index, d.vram_total_mb, free.get(d.index, 0)) for d in state.discovery.devices)
        host = state.health.host if state.health else state.discovery.host
        resident = []
        for model_id, info in state.models.items():
            if info.status not in RESIDENT:
                continue
            entry = self.catalogue.get(model_id)
            share = info.rank.size if info.rank is not None else 1  # a gang member holds its share
            resident.append(
                ResidentModel(
                    id=model_id,
                    vram_mb=-(-(entry.vram_mb if entry else 0) // share) or info.vram_used_mb,
                    devices=tuple(info.devices),
                    in_flight=max(
                        state.in_flight.get(model_id, 0) + state.peer_in_flight.get(model_id, 0), info.in_flight
                    ),
                    last_used=state.last_used.get(model_id, info.loaded_at),
                    priority=entry.priority if entry else 0,
                    pinned=entry is not None and state.name in entry.pinned_on,
                )
            )
        ram_free = host.ram_available_mb
        if not devices:  # RAM "available" counts the page cache, where llama.cpp's mmap'ed weights live: a model
            # holds what its catalogue entry says, whatever the kernel reports
            ram_free = min(ram_free, host.ram_total_mb - sum(r.vram_mb for r in resident))
        return NeuronView(
            name=state.name,
            harnesses=frozenset(state.discovery.harnesses),
            devices=devices,
            ram_total_mb=host.ram_total_mb,
            ram_free_mb=max(0, ram_free),
            resident=tuple(resident),
            group=state.ref.group,
            multi_host=state.discovery.multi_host,
        )
