"""Requests waiting for capacity, and the scheduler acting on its policy (:mod:`helexa.gateway.scheduling`).

A request whose model is served while nothing waits goes straight through (the router's fast path: no queue).
Any other request takes a ticket and waits here until the policy admits it — its model loaded and not draining —
or refuses it. The policy runs again whenever something it looks at changes: a request joins or leaves the queue,
a request ends while others wait, a load ends, a neuron was polled, the oldest waiter becomes overdue. An admitted
request goes to the replica the policy named. Loads are started through the
:class:`~helexa.gateway.lifecycle.Lifecycle` exactly as planned (the victims it chose, on the neuron — or a gang's
members — it chose); a plan that went stale before it ran is planned again at the next event.

After every poll, models idle for their ``idle_unload_seconds`` are unloaded (:mod:`helexa.gateway.idle`). Time
comes from ``clock`` (injectable).

In a cluster (``peers``) only the leader plans — with every gateway's waiting requests — and each gateway admits
its own requests to replicas the leader does not hold back; a follower's requests for a model nobody serves wait
for the leader's load (or get its verdict). While the store does not answer, nobody plans: a request for a model
that is not served now gets a 503 at once.

Bounds: at most ``queue_limit`` requests of one key wait for one model (past it, 503 with ``Retry-After``), so
one key cannot fill the queue for the others; a request waits at most ``load_timeout`` in all (503).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from helexa.cluster.store import StoreUnavailable
from helexa.errors import HelexaError, Overloaded
from helexa.gateway.fleetview import fleet_view, refusal
from helexa.gateway.idle import IdleUnloads
from helexa.gateway.lifecycle import Lifecycle, PlanOutdated
from helexa.gateway.metrics import GatewayMetrics
from helexa.gateway.peers import Peers
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
)
from helexa.server.keys import request_key_key

__all__ = ["Client", "Scheduler", "client_of"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Client:
    """Who sends a request, as scheduling sees it: its key's name ("" = no key) and priority rank."""

    key: str = ""
    priority: int = NORMAL


ANONYMOUS = Client()


def client_of(request: Mapping[Any, Any]) -> Client:
    """The :class:`Client` of ``request`` (a ``web.Request`` or a batch's line: its key's name and priority;
    anonymous without keys)."""
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
        peers: Peers | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry, self.lifecycle, self.metrics, self.policy = registry, lifecycle, metrics, policy
        self.queue_limit, self.load_timeout, self.clock = queue_limit, load_timeout, clock
        metrics.load_queue_limit.set(queue_limit)
        self.idle = IdleUnloads(registry, lifecycle, metrics, idle_seconds=idle_seconds, clock=self._now)
        self.peers = peers
        if peers is not None:
            peers.on_change = self._peers_changed
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
        not go there. (A replica that only drains still serves what was admitted before the drain.) A follower
        counts every replica the leader holds back as leaving."""
        if self.peers is not None and not self.planning:
            return frozenset(n for n, m in self.peers.held if m == model_id)
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
        """A neuron was polled: run the policy if anyone waits, and unload idle models (the leader, in a cluster)."""
        if self.active:
            self._changed()
        if (self._sweep is None or self._sweep.done()) and self.planning:
            self._sweep_idle()

    def _now(self) -> float:
        return self.clock()  # (read each time: tests replace the clock)

    @property
    def planning(self) -> bool:
        """This gateway places loads: alone, or as the cluster's leader (while the store answers)."""
        return self.peers is None or self.peers.placing

    def _peers_changed(self) -> None:
        """The leader's plan, the others' waiting requests, a verdict, leadership or the store changed."""
        self._hold()
        self._changed()

    def close(self) -> None:
        """Stop the timers and idle unloads in progress (the app is shutting down)."""
        for handle in (self._run_soon, self._overdue, self._sweep):
            if handle is not None:
                handle.cancel()

    # ------------------------------------------------------------------------------------------ the policy

    def _changed(self) -> None:
        peers = self.peers
        others = peers is not None and peers.placing and peers.others_waiting
        if peers is not None and not peers.placing:  # the leader hears of what waits here (and of what no longer)
            peers.waiting(t.waiter for t in self._tickets.values() if not t.future.done())
        if not self._tickets and not others and self._draining:  # nobody waits any more: nothing needs to drain
            self._draining = frozenset()
            self._hold()
        self.active = bool(self._tickets) or bool(self.held)
        if self._run_soon is None and (self._tickets or others):
            self._run_soon = asyncio.get_running_loop().call_soon(self._run)

    def _run(self) -> None:
        self._run_soon = None
        waiting = [t for t in self._tickets.values() if not t.future.done()]
        now = self.clock()
        if not self.planning:
            self._follow(waiting, now)
            return
        remote = self.peers.others_waiting if self.peers is not None else ()
        waiters = [t.waiter for t in waiting] + list(remote)
        decision = decide(waiters, self._fleet(waiters), now, self.policy)
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
            if number in self._tickets:  # (another gateway's request is admitted there)
                self._admit(self._tickets[number], neuron)
        refused_elsewhere: dict[str, str] = {}
        for number, reason in decision.refuse.items():
            if number in self._tickets:
                self._tickets[number].future.set_exception(self._refusal(self._tickets[number].waiter.model, reason))
            else:
                refused_elsewhere[next(w.model for w in remote if w.ticket == number)] = reason
        for model, reason in refused_elsewhere.items():
            assert self.peers is not None
            self.peers.verdict(model, self._refusal(model, reason))
        for load in decision.loads:
            self._start(load)
        self._arm_overdue(now)

    def _admit(self, ticket: _Ticket, neuron: str) -> None:
        ticket.admitted = neuron
        _bump(self._admitted, (neuron, ticket.waiter.model), 1)
        ticket.future.set_result(neuron)

    def _follow(self, waiting: list[_Ticket], now: float) -> None:
        """A follower's turn: publish what waits here, admit what a replica the leader does not hold back serves,
        pass on the leader's verdicts; without the store, refuse what no replica serves now."""
        peers = self.peers
        assert peers is not None
        peers.waiting(t.waiter for t in waiting)
        models = {t.waiter.model for t in waiting}
        fleet = replace(self._fleet([t.waiter for t in waiting]), loading=frozenset(models))  # plans nothing
        for number, neuron in decide([t.waiter for t in waiting], fleet, now, self.policy).admit:
            self._admit(self._tickets[number], neuron)
        for ticket in waiting:
            if ticket.future.done():
                continue
            verdict = peers.verdicts.get(ticket.waiter.model)
            if verdict is not None and verdict[1] >= ticket.waiter.arrived:
                ticket.future.set_exception(verdict[2])
            elif not peers.up:
                ticket.future.set_exception(
                    StoreUnavailable(
                        f"model {ticket.waiter.model!r} is not loaded, and loading it needs the cluster's leader: the "
                        f"cluster store does not answer ({peers.store.error}); loaded models are served meanwhile",
                        headers={"Retry-After": "5"},
                    )
                )

    def _hold(self) -> None:
        held = self._draining.union(self._unloading, *self._evicting.values())
        peers = self.peers
        if peers is not None:
            if self.planning:
                peers.plan(held, self.lifecycle.loading())
            else:
                held |= peers.held
        self.held = held
        self.active = bool(self._tickets) or bool(self.held)

    def _fleet(self, waiting: list[Waiter]) -> Fleet:
        leaving = {w.model: self.leaving(w.model) for w in waiting}
        targets = {n for m in self.lifecycle.loading() for n in self._targets.get(m, ())}
        return fleet_view(
            self.registry,
            waiting,
            admitted=self._admitted,
            leaving=leaving,
            loading=self.lifecycle.loading(),
            claimed=targets,
        )

    def _refusal(self, model_id: str, reason: str) -> HelexaError:
        return refusal(self.registry, model_id, reason)

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
            if self.peers is not None and isinstance(error, HelexaError):
                self.peers.verdict(model_id, error)  # every gateway's waiters for it get the same
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

    def _sweep_idle(self) -> None:
        busy = {t.waiter.model for t in self._tickets.values()} | {m for _, m in self._admitted}
        busy |= set(self.lifecycle.loading()) | {m for _, m in self.held}
        pairs = self.idle.candidates(busy)
        if pairs:
            self._sweep = asyncio.create_task(self.idle.unload(pairs, self._unloading_one), name="idle unloads")

    def _unloading_one(self, pair: tuple[str, str], started: bool) -> bool:
        """An idle unload of ``pair`` begins (``started``: hold it back; False: it may not, it was used since the
        sweep looked) or ended."""
        if started:
            neuron, model_id = pair
            if self.registry.neurons[neuron].in_flight.get(model_id, 0) or any(
                m == model_id for _, m in self._admitted
            ):
                return False
            self._unloading.add(pair)
        else:
            self._unloading.discard(pair)
        self._hold()
        self._changed()
        return True
