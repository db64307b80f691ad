"""The scheduler's policy — the gateway's one placer: of the requests waiting for capacity, which go now and to
which replica, which model is loaded where (a gang: on which members, evicting what on each), and which replicas
take no new requests so that a swap can happen. Pure: snapshots in, a :class:`Decision` out; time is an argument.
:mod:`helexa.gateway.queue` acts on the answers, and nothing downstream decides again: the lifecycle only checks
that a plan still holds on fresh numbers before it carries it out.

Two modes (``[scheduler] policy``):

- ``fifo`` — arrival order. The first request that needs a swap claims the capacity at once: the models it must
  evict take no new requests (they *drain*) and every later request for them waits behind it. A mixed workload
  swaps on nearly every request — the behaviour of a plain model swapper, kept as the baseline.
- ``swap-aware`` — requests for models that are loaded go first. A model that is not loaded is loaded as soon as
  room can be made without stopping anyone (the models evicted are idle), and every request waiting for it is
  served by that one load. Among models waiting for a load: the highest priority first, then by turns over keys
  (each key's models in the order it asked for them: one key cannot go first twice while another waits), then
  the model the most keys wait for (a key's thousand requests count once), then the oldest. A request
  that has waited ``max_wait`` seconds is *overdue*: it is planned first, in arrival order, and may drain busy
  models — so nothing waits much longer than ``max_wait`` plus the swap.

In both modes requests are ordered by priority first (a key's ``priority``: ``batch`` < ``normal`` <
``interactive``). A model that requests of a higher priority than the waiter's are using — in flight, waiting
for it, or served within ``hold`` seconds — is never evicted or drained for it; pinned models never are; a model
with requests in flight is evicted only once it has drained. A request whose model no neuron could ever hold,
or that only pinned models (or models of a higher catalogue priority, under the ``priority`` strategy) stand in
the way of, is refused at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from helexa.gateway.placement import Need, NeuronView, could_fit, fits, pick_replica, place, place_gang, plan_eviction

__all__ = [
    "BATCH",
    "INTERACTIVE",
    "NORMAL",
    "PRIORITIES",
    "PRIORITY_NAMES",
    "Decision",
    "Fleet",
    "Load",
    "Policy",
    "Waiter",
    "decide",
    "idle_unloads",
]

BATCH, NORMAL, INTERACTIVE = 0, 1, 2
PRIORITY_NAMES = ("batch", "normal", "interactive")  # by rank
PRIORITIES = {name: rank for rank, name in enumerate(PRIORITY_NAMES)}


@dataclass(frozen=True, slots=True)
class Waiter:
    """A request waiting for capacity: ``ticket`` grows with arrival; ``key`` is its key's name ("" = none);
    ``preferred``: the replica that served its conversation last (prefix affinity; "" = none)."""

    ticket: int
    model: str
    arrived: float
    priority: int = NORMAL
    key: str = ""
    preferred: str = ""


@dataclass(frozen=True, slots=True)
class Fleet:
    """What the policy sees of the fleet.

    ``neurons``: placement views (a resident model's ``in_flight`` includes requests admitted but not yet sent);
    ``serving``: model -> neurons that serve it now (a gang: its head); ``loading``: models with a load in progress;
    ``claimed``: neurons a load is in progress on (nothing else is planned there until it ends); ``sleeping``:
    model -> the neurons where it sleeps (one; a gang's members, head first): waking it needs no eviction;
    ``needs``: the catalogue's needs of the models waited for; ``used``: (neuron, model) -> priority -> when a
    request of that priority last used it (``now`` while one is in flight); ``busy``: (neuron, model) -> requests
    in flight there and queued in its engine (which replica an admitted request goes to).
    """

    neurons: tuple[NeuronView, ...] = ()
    serving: Mapping[str, frozenset[str]] = field(default_factory=dict)
    loading: frozenset[str] = frozenset()
    claimed: frozenset[str] = frozenset()
    sleeping: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    needs: Mapping[str, Need] = field(default_factory=dict)
    used: Mapping[tuple[str, str], Mapping[int, float]] = field(default_factory=dict)
    busy: Mapping[tuple[str, str], int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Load:
    """Load ``model`` on ``neuron`` after unloading ``victims`` there (in order). A gang's load names its
    ``members`` in rank order (the head, ``neuron``, first) and the victims on each (``member_victims``; the
    head's are ``victims``); its sleeping gang on exactly those members is woken instead."""

    model: str
    neuron: str
    victims: tuple[str, ...] = ()
    members: tuple[str, ...] = ()
    member_victims: tuple[tuple[str, ...], ...] = ()

    @property
    def places(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """``(neuron, victims there)`` for every neuron the load takes, the head (or the only one) first."""
        if self.members:
            return tuple(zip(self.members, self.member_victims or ((),) * len(self.members), strict=True))
        return ((self.neuron, self.victims),)


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do now: let ``admit`` through — ``(ticket, neuron)``: each request to the replica named —, start
    ``loads``, keep the ``draining`` (neuron, model) replicas from taking new requests (busy models to be evicted,
    and the victims of ``loads``), and refuse ``refuse`` (ticket -> ``no_placement``, ``no_room`` or
    ``not_found``)."""

    admit: tuple[tuple[int, str], ...] = ()
    loads: tuple[Load, ...] = ()
    draining: frozenset[tuple[str, str]] = frozenset()
    refuse: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Policy:
    """``mode``: ``swap-aware`` or ``fifo``; ``max_wait``: seconds before a request is overdue; ``hold``: seconds a
    model stays protected from lower priorities after a use; ``strategy``: the eviction order (``lru`` or
    ``priority``, see :func:`helexa.gateway.placement.plan_eviction`)."""

    mode: str = "swap-aware"
    max_wait: float = 30.0
    hold: float = 120.0
    strategy: str = "lru"


def decide(waiters: Sequence[Waiter], fleet: Fleet, now: float, policy: Policy) -> Decision:
    """The decision for ``waiters`` (any order) on ``fleet`` at ``now`` (see the module's docstring)."""
    plan = _Round(waiters, fleet, now, policy)
    ordered = sorted(waiters, key=lambda w: (-w.priority, w.ticket))
    if policy.mode == "fifo":
        for waiter in ordered:
            if not plan.admit(waiter):
                plan.plan(waiter, drain=True)
        return plan.decision()
    for waiter in ordered:  # overdue: their capacity first, draining busy models if it must
        if now - waiter.arrived >= policy.max_wait and not plan.serves(waiter.model):
            plan.plan(waiter, drain=True)
    rest: dict[str, list[Waiter]] = {}
    for waiter in ordered:
        if not plan.admit(waiter):
            rest.setdefault(waiter.model, []).append(waiter)
    turns = _turns(rest.values())

    def rank(group: list[Waiter]) -> tuple[int, int, int, int]:
        model = group[0].model
        return (-group[0].priority, turns[model], -len({w.key for w in group}), min(w.ticket for w in group))

    for group in sorted(rest.values(), key=rank):
        plan.plan(group[0], drain=False, group=group)
    return plan.decision()


def _turns(groups: Iterable[list[Waiter]]) -> dict[str, int]:
    """Round-robin turns over keys: each key's models in the order it first asked for them; a model's turn is its
    earliest place in any key's list. One key asking for many models gets one model per turn, like every other."""
    per_key: dict[str, list[tuple[int, str]]] = {}
    for group in groups:
        firsts: dict[str, int] = {}
        for w in group:
            firsts[w.key] = min(firsts.get(w.key, w.ticket), w.ticket)
        for key, ticket in firsts.items():
            per_key.setdefault(key, []).append((ticket, group[0].model))
    turns: dict[str, int] = {}
    for models in per_key.values():
        for turn, (_, model) in enumerate(sorted(models)):
            turns[model] = min(turns.get(model, turn), turn)
    return turns


class _Round:
    """One decision being made: what has been admitted, claimed and drained so far."""

    def __init__(self, waiters: Sequence[Waiter], fleet: Fleet, now: float, policy: Policy) -> None:
        self.fleet, self.now, self.policy = fleet, now, policy
        self.admitted: list[tuple[int, str]] = []
        self.loads: list[Load] = []
        self.refused: dict[int, str] = {}
        self.draining: set[tuple[str, str]] = set()
        self.claimed: set[str] = set(fleet.claimed)  # neurons a load runs on, or was planned or drained on now
        self.planned: set[str] = set(fleet.loading)  # models loading, planned to load, or waiting for a drain
        self.busy: dict[tuple[str, str], int] = {}  # (neuron, model) -> requests admitted there this round
        self.wanted: dict[str, int] = {}  # model -> highest priority waiting for it
        for waiter in waiters:
            self.wanted[waiter.model] = max(self.wanted.get(waiter.model, -1), waiter.priority)

    def decision(self) -> Decision:
        return Decision(tuple(self.admitted), tuple(self.loads), frozenset(self.draining), dict(self.refused))

    def serves(self, model: str) -> bool:
        """Some replica of ``model`` takes requests (it is loaded and not draining)."""
        return any((n, model) not in self.draining for n in self.fleet.serving.get(model, ()))

    def admit(self, waiter: Waiter) -> bool:
        """Admit ``waiter`` to the least busy replica of its model that takes requests (its conversation's, unless
        that one is much busier); False when none does."""
        model = waiter.model
        if waiter.ticket in self.refused:
            return False
        replicas = [n for n in self.fleet.serving.get(model, ()) if (n, model) not in self.draining]
        if not replicas:
            return False
        busy = self.fleet.busy
        loads = [(n, busy.get((n, model), 0) + self.busy.get((n, model), 0)) for n in replicas]
        neuron = pick_replica(loads, waiter.preferred or None)
        self.admitted.append((waiter.ticket, neuron))
        self.busy[(neuron, model)] = self.busy.get((neuron, model), 0) + 1
        return True

    def plan(self, waiter: Waiter, *, drain: bool, group: Iterable[Waiter] = ()) -> None:
        """Plan a load for ``waiter``'s model: where it fits, else where idle models make room, else (``drain``)
        where busy ones will once drained. Refuse it (and ``group``) when no room could ever be made."""
        model = waiter.model
        if model in self.planned or model in self.fleet.serving or waiter.ticket in self.refused:
            return
        need = self.fleet.needs.get(model)
        if need is None:  # not in the catalogue and no longer loaded anywhere
            reason = "not_found"
        else:
            load = self._now(need, waiter)
            if load is not None:
                self.loads.append(load)
                self.planned.add(model)
                for neuron, victims in load.places:
                    self.claimed.add(neuron)
                    self.draining.update((neuron, victim) for victim in victims)
                return
            if drain and need.hosts == 1 and self._drain(need, waiter):
                return
            reason = self._never(need)
        if reason:
            for w in (waiter, *group):
                self.refused[w.ticket] = reason

    def _now(self, need: Need, waiter: Waiter) -> Load | None:
        """A load that can start now: a sleeping replica (or gang) to wake, a neuron (for a gang: as many neurons
        as it spans) where it fits, or where idle models make room."""
        asleep = self.fleet.sleeping.get(need.model_id, ())
        if asleep and not self.claimed.intersection(asleep):
            if need.hosts > 1:
                return Load(need.model_id, asleep[0], members=asleep, member_victims=((),) * len(asleep))
            return Load(need.model_id, asleep[0])
        views = [self._view(v, waiter) for v in self.fleet.neurons if v.name not in self.claimed]
        if need.hosts > 1:
            gang = place_gang(need, views, self.policy.strategy)
            if gang is None:
                return None
            return Load(need.model_id, gang.members[0], gang.victims[0], gang.members, gang.victims)
        target = place(need, views)
        if target is not None:
            return Load(need.model_id, target)
        found = plan_eviction(need, views, self.policy.strategy)
        return None if found is None else Load(need.model_id, found.neuron, found.victims)

    def _drain(self, need: Need, waiter: Waiter) -> bool:
        """Claim a neuron where busy models make room once drained; they take no new requests meanwhile."""
        drained = [self._view(v, waiter, drained=True) for v in self.fleet.neurons if v.name not in self.claimed]
        found = plan_eviction(need, drained, self.policy.strategy)
        if found is None:
            return False
        self.draining.update((found.neuron, victim) for victim in found.victims)
        self.claimed.add(found.neuron)
        self.planned.add(need.model_id)
        return True

    def _protected(self, neuron: str, model: str, priority: int) -> bool:
        """A request of a higher priority than ``priority`` uses ``model`` on ``neuron``: waits for it, is in
        flight there, or was served there within ``hold`` seconds."""
        if self.wanted.get(model, -1) > priority:
            return True
        uses = self.fleet.used.get((neuron, model), {})
        return any(p > priority and self.now - at < self.policy.hold for p, at in uses.items())

    def _view(self, view: NeuronView, waiter: Waiter, *, drained: bool = False) -> NeuronView:
        """``view`` as ``waiter`` may evict from it: what is loading or protected counts as pinned, requests
        admitted this round as in flight; ``drained``: as if every request in flight there had finished."""
        resident = []
        for model in view.resident:
            keep = model.id in self.planned or self._protected(view.name, model.id, waiter.priority)
            admitted = self.busy.get((view.name, model.id), 0)
            in_flight = 0 if drained else model.in_flight + admitted
            if drained and admitted and self.policy.mode != "fifo":
                keep = True  # swap-aware: what was just admitted is served before it drains
            resident.append(replace(model, pinned=model.pinned or keep, in_flight=in_flight))
        return replace(view, resident=tuple(resident))

    def _never(self, need: Need) -> str:
        """Why ``need`` could never be placed as the fleet stands ("" when it might, once models drain, loads end
        and protections lapse): ``no_placement`` (no neuron could hold it at all; a gang: fewer neurons that join
        gangs could hold a rank than it spans) or ``no_room`` (every neuron that could is loading nothing and holds
        only models that may never go for it: pinned there, or of a higher catalogue priority under the
        ``priority`` strategy)."""
        if need.hosts > 1:
            members = [v for v in self.fleet.neurons if v.multi_host and could_fit(need.rank(), v)]
            if len(members) < need.hosts:
                return "no_placement"
            return "" if sum(self._hopeful(need.rank(), v) for v in members) >= need.hosts else "no_room"
        hosts = [v for v in self.fleet.neurons if could_fit(need, v)]
        if not hosts:
            return "no_placement"
        return "" if any(self._hopeful(need, v) for v in hosts) else "no_room"

    def _hopeful(self, need: Need, view: NeuronView) -> bool:
        """``need`` may be placed on ``view`` some day: a load there ends, it fits, or something there may go for
        it (not pinned; under the ``priority`` strategy, not of a higher catalogue priority)."""
        if view.name in self.fleet.claimed or fits(need, view):
            return True
        for model in view.resident:
            lesser = self.policy.strategy != "priority" or model.priority <= need.priority
            if not model.pinned and lesser:
                return True
        return False


def idle_unloads(
    neurons: Iterable[NeuronView],
    idle_seconds: Mapping[str, float],
    now: float,
    *,
    skip: frozenset[str] = frozenset(),
) -> list[tuple[str, str]]:
    """``(neuron, model)`` pairs to unload for idleness: a resident model with nothing in flight, not pinned there,
    not in ``skip`` (loading or waited for), whose ``idle_seconds`` (0 or absent: never) have passed since its
    last use."""
    out = []
    for view in neurons:
        for model in view.resident:
            limit = idle_seconds.get(model.id, 0)
            if not limit or model.pinned or model.in_flight or model.id in skip:
                continue
            if now - model.last_used >= limit:
                out.append((view.name, model.id))
    return out
