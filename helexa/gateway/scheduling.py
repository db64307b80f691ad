"""The scheduler's policy: of the requests waiting for capacity, which go now, which model is loaded where (and
what is evicted for it), and which replicas take no new requests so that a swap can happen. Pure: snapshots in,
a :class:`Decision` out; time is an argument. :mod:`helexa.gateway.queue` acts on the answers.

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

from helexa.gateway.placement import Need, NeuronView, could_fit, fits, place, plan_eviction

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
    """A request waiting for capacity: ``ticket`` grows with arrival; ``key`` is its key's name ("" = none)."""

    ticket: int
    model: str
    arrived: float
    priority: int = NORMAL
    key: str = ""


@dataclass(frozen=True, slots=True)
class Fleet:
    """What the policy sees of the fleet.

    ``neurons``: placement views (a resident model's ``in_flight`` includes requests admitted but not yet sent);
    ``serving``: model -> neurons that serve it now; ``loading``: models with a load in progress; ``claimed``:
    neurons a load is in progress on (nothing else is planned there until it ends); ``sleeping``:
    model -> a neuron where it sleeps (waking it needs no eviction); ``needs``: the catalogue's needs of the models
    waited for; ``used``: (neuron, model) -> priority -> when a request of that priority last used it (``now``
    while one is in flight).
    """

    neurons: tuple[NeuronView, ...] = ()
    serving: Mapping[str, frozenset[str]] = field(default_factory=dict)
    loading: frozenset[str] = frozenset()
    claimed: frozenset[str] = frozenset()
    sleeping: Mapping[str, str] = field(default_factory=dict)
    needs: Mapping[str, Need] = field(default_factory=dict)
    used: Mapping[tuple[str, str], Mapping[int, float]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Load:
    """Load ``model`` on ``neuron`` after unloading ``victims`` there (in order). ``neuron`` is "" for a gang:
    its members are placed when it loads."""

    model: str
    neuron: str
    victims: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do now: let ``admit`` (tickets) through, start ``loads``, keep the ``draining`` (neuron, model)
    replicas from taking new requests (busy models to be evicted, and the victims of ``loads``), and refuse
    ``refuse`` (ticket -> ``no_placement``, ``no_room`` or ``not_found``)."""

    admit: tuple[int, ...] = ()
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
        self.admitted: list[int] = []
        self.loads: list[Load] = []
        self.refused: dict[int, str] = {}
        self.draining: set[tuple[str, str]] = set()
        self.claimed: set[str] = set(fleet.claimed)  # neurons a load runs on, or was planned or drained on now
        self.planned: set[str] = set(fleet.loading)  # models loading, planned to load, or waiting for a drain
        self.busy: dict[str, int] = {}  # model -> requests admitted this round
        self.wanted: dict[str, int] = {}  # model -> highest priority waiting for it
        for waiter in waiters:
            self.wanted[waiter.model] = max(self.wanted.get(waiter.model, -1), waiter.priority)

    def decision(self) -> Decision:
        return Decision(tuple(self.admitted), tuple(self.loads), frozenset(self.draining), dict(self.refused))

    def serves(self, model: str) -> bool:
        """Some replica of ``model`` takes requests (it is loaded and not draining)."""
        return any((n, model) not in self.draining for n in self.fleet.serving.get(model, ()))

    def admit(self, waiter: Waiter) -> bool:
        if waiter.ticket in self.refused or not self.serves(waiter.model):
            return False
        self.admitted.append(waiter.ticket)
        self.busy[waiter.model] = self.busy.get(waiter.model, 0) + 1
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
                if load.neuron:
                    self.claimed.add(load.neuron)
                    self.draining.update((load.neuron, victim) for victim in load.victims)
                return
            if drain and self._drain(need, waiter):
                return
            reason = self._never(need)
        if reason:
            for w in (waiter, *group):
                self.refused[w.ticket] = reason

    def _now(self, need: Need, waiter: Waiter) -> Load | None:
        """A load that can start now: a gang (it places its members itself), a sleeping replica to wake, a neuron
        where it fits, or one where idle models make room."""
        if need.hosts > 1:
            return Load(need.model_id, "")
        asleep = self.fleet.sleeping.get(need.model_id)
        if asleep is not None and asleep not in self.claimed:
            return Load(need.model_id, asleep)
        views = [self._view(v, waiter) for v in self.fleet.neurons if v.name not in self.claimed]
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
            in_flight = 0 if drained else model.in_flight + self.busy.get(model.id, 0)
            if drained and self.busy.get(model.id, 0) and self.policy.mode != "fifo":
                keep = True  # swap-aware: what was just admitted is served before it drains
            resident.append(replace(model, pinned=model.pinned or keep, in_flight=in_flight))
        return replace(view, resident=tuple(resident))

    def _never(self, need: Need) -> str:
        """Why ``need`` could never be placed as the fleet stands ("" when it might, once models drain, loads end
        and protections lapse): ``no_placement`` (no neuron could hold it at all) or ``no_room`` (every neuron that
        could is loading nothing and holds only models that may never go for it: pinned there, or of a higher
        catalogue priority under the ``priority`` strategy)."""
        hosts = [v for v in self.fleet.neurons if could_fit(need, v)]
        if not hosts:
            return "no_placement"
        for view in hosts:
            if view.name in self.fleet.claimed or fits(need, view):
                return ""
            for model in view.resident:
                lesser = self.policy.strategy != "priority" or model.priority <= need.priority
                if not model.pinned and lesser:
                    return ""
        return "no_room"


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
