"""Requests waiting for capacity, and the scheduler acting on its policy (:mod:`helexa.gateway.scheduling`).

A request whose model is served while nothing waits goes straight through (the router's fast path: no queue).
Any other request takes a ticket and waits here until the policy admits it — its model loaded and not draining —
or refuses it. The policy runs again whenever something it looks at changes: a request joins or leaves the queue,
a request ends while others wait, a load ends, a neuron was polled, the oldest waiter becomes overdue. An admitted
request goes to the replica the policy named. Loads are started through the
:class:`~helexa.gateway.lifecycle.Lifecycle` exactly as planned (the victims it chose, on the neuron — or a gang's
members — it chose); a plan that went stale before it ran is planned again at the next event.

After every poll, models idle for their ``idle_unload_seconds`` are unloaded (put to sleep where the harness has
a sleep tier) unless they are pinned there, busy or waited for. Time comes from ``clock`` (injectable).

Bounds: at most ``queue_limit`` requests of one key wait for one model (past it, 503 with ``Retry-After``), so
one key cannot fill the queue for the others; a request waits at most ``load_timeout`` in all (503).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from aiohttp import web

from helexa.errors import HelexaError, NotFound, Overloaded
from helexa.gateway.lifecycle import Lifecycle, NoCapacity, PlanOutdated
from helexa.gateway.metrics import GatewayMetrics
from helexa.gateway.placement import ResidentModel, could_fit
from helexa.gateway.registry import NeuronState, Registry
from helexa.gateway.scheduling import (
    NORMAL,
    PRIORITIES,
    PRIORITY_NAMES,
    Fleet,
    Load,
    Policy,
    Waiter,
    decide,
    idle_unloads,
)
from helexa.server.keys import request_key_key
from helexa.wire.neuron import ModelStatus

__all__ = ["Client", "Scheduler", "client_of"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Client:
    """Who sends a request, as scheduling sees it: its key's name ("" = no key) and priority rank."""

    key: str = ""
    priority: int = NORMAL


ANONYMOUS = Client()


def client_of(request: web.Request) -> Client:
    """The :class:`Client` of ``request`` (its key's name and priority; anonymous without keys)."""
    key = request.get(request_key_key)
    if key is None:
        return ANONYMOUS
    return Client(key.name, PRIORITIES[key.priority])


@dataclass(eq=False, slots=True)
class _Ticket:
    waiter: Waiter
    future: asyncio.Future[str]
    admitted: str = ""  # the neuron it was admitted to


def _bump(table: dict, key: object, n: int) -> None:
    """Add ``n`` to ``table[key]``, dropping it at zero."""
    value = table.get(key, 0) + n
    if value:
        table[key] = value
    else:
        table.pop(key, None)


class Scheduler:
    """The queue of requests waiting for capacity and the policy's hands (see the module's docstring)."""

    def __init__(
        self,
        registry: Registry,
        lifecycle: Lifecycle,
        metrics: GatewayMetrics,
        *,
        policy: Policy,
        queue_limit: int = 64,
        load_timeout: float = 900.0,
        idle_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry, self.lifecycle, self.metrics, self.policy = registry, lifecycle, metrics, policy
        self.queue_limit, self.load_timeout, self.clock = queue_limit, load_timeout, clock
        metrics.load_queue_limit.set(queue_limit)
        #: model -> seconds idle before it is unloaded (0: never), from the catalogue and ``[eviction]``
        self.idle_seconds = {
            e.id: idle_seconds if e.idle_unload_seconds is None else e.idle_unload_seconds for e in registry.entries
        }
        self._tickets: dict[int, _Ticket] = {}
        self._numbers = itertools.count()
        self._queued: dict[tuple[str, str], int] = {}  # (model, key) -> requests waiting
        self._admitted: dict[tuple[str, str], int] = {}  # (neuron, model) -> requests admitted and not yet sent
        #: (neuron, model) replicas that take no new requests: drained for a swap, or being unloaded for idleness
        self.held: frozenset[tuple[str, str]] = frozenset()
        self._draining: frozenset[tuple[str, str]] = frozenset()
        self._unloading: set[tuple[str, str]] = set()
        self._evicting: dict[str, frozenset[tuple[str, str]]] = {}  # model loading -> its victims (neuron, model)
        self._targets: dict[str, tuple[str, ...]] = {}  # model loading -> the neurons it loads on (as planned here)
        self._run_soon: asyncio.Handle | None = None
        self._overdue: asyncio.TimerHandle | None = None
        self._sweep: asyncio.Task[None] | None = None
        self.active = False  # anything waits or is held: requests take the slow path

    # ------------------------------------------------------------------------------------------ requests

    def held_for(self, model_id: str) -> frozenset[str]:
        """Neurons whose replica of ``model_id`` takes no new requests now (it drains, or is being unloaded)."""
        return frozenset(n for n, m in self.held if m == model_id) if self.held else frozenset()

    def leaving(self, model_id: str) -> frozenset[str]:
        """Neurons whose replica of ``model_id`` is being unloaded (for a swap, or idle): an admitted request must
        not go there. (A replica that only drains still serves what was admitted before the drain.)"""
        if not self._unloading and not self._evicting:
            return frozenset()
        gone = {n for n, m in self._unloading if m == model_id}
        for victims in self._evicting.values():
            gone.update(n for n, m in victims if m == model_id)
        return frozenset(gone)

    async def wait(self, model_id: str, client: Client = ANONYMOUS, preferred: str = "") -> str:
        """Wait until the policy admits a request of ``client`` for ``model_id`` (it is served and not draining);
        return the neuron it admitted the request to (``preferred``: its conversation's replica, if any).

        :raises Overloaded: ``queue_limit`` requests of this key already wait for the model, or the wait took
            longer than ``load_timeout``.
        :raises NoCapacity: no neuron could ever hold the model as the fleet stands.
        :raises HelexaError: the model's load failed (the neuron's reason, e.g. a 422 preflight refusal).
        """
        counts = self._queued
        if counts.get((model_id, client.key), 0) >= self.queue_limit:
            raise Overloaded(
                f"{self.queue_limit} requests of this key already wait for model {model_id!r}; retry shortly",
                retry_after=5,
            )
        number = next(self._numbers)
        ticket = _Ticket(
            Waiter(number, model_id, self.clock(), client.priority, client.key, preferred),
            asyncio.get_running_loop().create_future(),
        )
        self._tickets[number] = ticket
        _bump(counts, (model_id, client.key), 1)
        gauge = self.metrics.load_queue.labels(model_id, PRIORITY_NAMES[client.priority])
        gauge.inc()
        self._changed()
        try:
            return await asyncio.wait_for(ticket.future, self.load_timeout)
        except TimeoutError:
            raise Overloaded(
                f"model {model_id!r} could not be served within {self.load_timeout:.0f}s; retry later", retry_after=30
            ) from None
        finally:
            if ticket.future.done() and not ticket.future.cancelled():
                ticket.future.exception()  # retrieved: a refusal that raced a cancellation is not logged as lost
            del self._tickets[number]
            _bump(counts, (model_id, client.key), -1)
            if ticket.admitted:
                _bump(self._admitted, (ticket.admitted, model_id), -1)
            gauge.dec()
            waited = self.clock() - ticket.waiter.arrived
            self.metrics.queue_wait.labels(model_id, PRIORITY_NAMES[client.priority]).observe(waited)
            self._changed()

    def began(self, state: NeuronState, model_id: str, priority: int) -> None:
        """A request of ``priority`` began on ``state`` (counted in flight there by the caller)."""
        state.used_by[(model_id, priority)] = self.clock()

    def ended(self, state: NeuronState, model_id: str, priority: int) -> None:
        """A request of ``priority`` on ``state`` ended: its model was just used; the policy runs if anyone waits."""
        state.last_used[model_id] = state.used_by[(model_id, priority)] = self.clock()
        if self.active:
            self._changed()

    def polled(self) -> None:
        """A neuron was polled: run the policy if anyone waits, and unload idle models."""
        if self.active:
            self._changed()
        if self._sweep is None or self._sweep.done():
            pairs = self._idle()
            if pairs:
                self._sweep = asyncio.create_task(self._unload_idle(pairs), name="idle unloads")

    def close(self) -> None:
        """Stop the timers and idle unloads in progress (the app is shutting down)."""
        for handle in (self._run_soon, self._overdue, self._sweep):
            if handle is not None:
                handle.cancel()

    # ------------------------------------------------------------------------------------------ the policy

    def _changed(self) -> None:
        if not self._tickets and self._draining:  # nobody waits any more: nothing needs to drain
            self._draining = frozenset()
            self._hold()
        self.active = bool(self._tickets) or bool(self.held)
        if self._run_soon is None and self._tickets:
            self._run_soon = asyncio.get_running_loop().call_soon(self._run)

    def _run(self) -> None:
        self._run_soon = None
        waiting = [t for t in self._tickets.values() if not t.future.done()]
        now = self.clock()
        decision = decide([t.waiter for t in waiting], self._fleet(waiting, now), now, self.policy)
        changed = decision.admit or decision.loads or decision.refuse or decision.draining != self._draining
        if changed and logger.isEnabledFor(logging.DEBUG):  # its arguments are built only when it is written
            logger.debug(
                "%d waiting: admit %d, load %s, drain %s, refuse %s",
                len(waiting),
                len(decision.admit),
                [(load.model, load.places) for load in decision.loads],
                sorted(decision.draining),
                decision.refuse,
            )
        self._draining = decision.draining
        self._hold()
        for number, neuron in decision.admit:
            ticket = self._tickets[number]
            ticket.admitted = neuron
            _bump(self._admitted, (neuron, ticket.waiter.model), 1)
            ticket.future.set_result(neuron)
        for number, reason in decision.refuse.items():
            self._tickets[number].future.set_exception(self._refusal(self._tickets[number].waiter.model, reason))
        for load in decision.loads:
            self._start(load)
        self._arm_overdue(now)

    def _hold(self) -> None:
        self.held = self._draining.union(self._unloading, *self._evicting.values())
        self.active = bool(self._tickets) or bool(self.held)

    def _fleet(self, waiting: list[_Ticket], now: float) -> Fleet:
        registry = self.registry
        models = {t.waiter.model for t in waiting}
        admitted = self._admitted
        views = registry.views()
        if admitted:  # admitted and not yet sent: busy all the same
            views = [
                replace(v, resident=tuple(_plus(r, admitted.get((v.name, r.id), 0)) for r in v.resident)) for v in views
            ]
        serving: dict[str, frozenset[str]] = {}
        busy: dict[tuple[str, str], int] = {}
        for model in models:  # replicas being unloaded (for a swap, or idle) serve no more
            replicas = [n for n in registry.replicas(model) if n.name not in self.leaving(model)]
            if replicas:
                serving[model] = frozenset(n.name for n in replicas)
            for n in replicas:  # through this gateway, queued in the engine, admitted and not yet sent
                queued = n.in_flight.get(model, 0) + n.models[model].waiting + admitted.get((n.name, model), 0)
                busy[(n.name, model)] = queued
        loading = set(self.lifecycle.loading())
        claimed = {n for m in loading for n in self._targets.get(m, ())}
        used: dict[tuple[str, str], dict[int, float]] = {}
        for state in registry.neurons.values():
            if not state.healthy:
                continue
            for model_id, info in state.models.items():
                if info.status in (ModelStatus.LOADING, ModelStatus.DOWNLOADING):
                    loading.add(model_id)
                    claimed.add(state.name)
            for (model_id, priority), at in state.used_by.items():
                used.setdefault((state.name, model_id), {})[priority] = at
        needs = {m: registry.need(registry.catalogue[m]) for m in models if m in registry.catalogue}
        sleeping = {m: found for m in models if (found := self._asleep(m))}
        return Fleet(tuple(views), serving, frozenset(loading), frozenset(claimed), sleeping, needs, used, busy)

    def _asleep(self, model_id: str) -> tuple[str, ...]:
        """Where ``model_id`` sleeps on healthy neurons: one neuron, or a gang's members in rank order (the head
        first); empty when it sleeps nowhere."""
        for gang in self.registry.gangs(model_id):
            if gang.sleeping:
                return tuple(m.neuron.name for m in gang.members)
        for state in self.registry.neurons.values():
            info = state.models.get(model_id)
            if state.healthy and info is not None and info.rank is None and info.status == ModelStatus.SLEEPING:
                return (state.name,)
        return ()

    def _refusal(self, model_id: str, reason: str) -> HelexaError:
        if reason == "not_found":
            return NotFound(f"model {model_id!r} is no longer loaded anywhere", param="model", code="model_not_found")
        if reason == "no_placement":
            entry = self.registry.catalogue.get(model_id)
            if entry is not None and entry.hosts > 1:
                rank = self.registry.need(entry).rank()
                joining = [v for v in self.registry.views() if v.multi_host]
                holding = sum(could_fit(rank, v) for v in joining)
                return NoCapacity(
                    f"model {model_id!r} spans {entry.hosts} hosts, but of the healthy neurons {len(joining)} join "
                    f"gangs ([neuron] multi_host) and {holding} of them could hold a rank ({rank.vram_mb} MiB, "
                    f"harness {entry.harness})",
                    code="no_placement",
                )
            return NoCapacity(f"no healthy neuron can hold model {model_id!r}", code="no_placement")
        return NoCapacity(
            f"model {model_id!r} does not fit now and every model that could make room is pinned "
            "(or of a higher priority); retry later",
            headers={"Retry-After": "10"},
        )

    def _start(self, load: Load) -> None:
        entry = self.registry.catalogue[load.model]
        task = self.lifecycle.start(entry, load)
        self._targets[load.model] = tuple(neuron for neuron, _ in load.places)
        victims = frozenset((neuron, v) for neuron, those in load.places for v in those)
        if victims:  # they take no new requests until the swap is over
            self._evicting[load.model] = victims
            self._hold()
        task.add_done_callback(lambda t, model_id=load.model: self._loaded(model_id, t))

    def _loaded(self, model_id: str, task: asyncio.Task[str]) -> None:
        self._targets.pop(model_id, None)
        if self._evicting.pop(model_id, None):
            self._hold()
        error = None if task.cancelled() else task.exception()
        if isinstance(error, PlanOutdated):  # planned again at the next event (a poll at the latest), not at once
            logger.info("planned load of %s went stale: %s", model_id, error.message)
            return
        if error is not None:
            for ticket in self._tickets.values():
                if ticket.waiter.model == model_id and not ticket.future.done():
                    ticket.future.set_exception(error)
        self._changed()

    def _arm_overdue(self, now: float) -> None:
        if self._overdue is not None:
            self._overdue.cancel()
            self._overdue = None
        pending = [t.waiter.arrived for t in self._tickets.values() if not t.future.done()]
        future = [a + self.policy.max_wait for a in pending if a + self.policy.max_wait > now]
        if future:
            delay = min(future) - now
            self._overdue = asyncio.get_running_loop().call_later(delay + 0.001, self._changed)

    # ------------------------------------------------------------------------------------------ idle unloads

    def _idle(self) -> list[tuple[str, str]]:
        if not any(self.idle_seconds.values()):
            return []
        now = self.clock()
        for state in self.registry.neurons.values():  # the gateway counts idleness from when it first saw a model
            for model_id, info in state.models.items():
                if info.status == ModelStatus.LOADED:
                    state.last_used.setdefault(model_id, now)
        busy = {t.waiter.model for t in self._tickets.values()} | {m for _, m in self._admitted}
        busy |= set(self.lifecycle.loading()) | {m for _, m in self.held}
        views = [
            replace(
                v,
                resident=tuple(
                    r for r in v.resident if self.registry.neurons[v.name].models[r.id].status == ModelStatus.LOADED
                ),
            )
            for v in self.registry.views()
        ]
        pairs, gangs = [], set()
        for neuron, model_id in idle_unloads(views, self.idle_seconds, now, skip=frozenset(busy)):
            rank = self.registry.neurons[neuron].rank(model_id)
            if rank is not None:  # a gang goes as one unit, through any member
                if (model_id, rank.gang) in gangs:
                    continue
                gangs.add((model_id, rank.gang))
            pairs.append((neuron, model_id))
        return pairs

    async def _unload_idle(self, pairs: list[tuple[str, str]]) -> None:
        for neuron, model_id in pairs:
            state = self.registry.neurons[neuron]
            self._unloading.add((neuron, model_id))
            self._hold()
            try:
                if state.in_flight.get(model_id, 0) or any(m == model_id for _, m in self._admitted):
                    continue  # used since the sweep looked
                idle = self.clock() - state.last_used.get(model_id, self.clock())
                logger.info("unloading %s from %s: idle for %.0fs", model_id, neuron, idle)
                await self.lifecycle.unload(neuron, model_id)
                self.metrics.idle_unloads.labels(model_id, neuron).inc()
            except HelexaError as exc:
                logger.warning("idle unload of %s from %s failed: %s", model_id, neuron, exc.message)
            finally:
                self._unloading.discard((neuron, model_id))
                self._hold()
                self._changed()


def _plus(model: ResidentModel, requests: int) -> ResidentModel:
    """``model`` with ``requests`` more in flight."""
    return replace(model, in_flight=model.in_flight + requests) if requests else model
