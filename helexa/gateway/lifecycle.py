"""Acting on the placer's plans: loads (evicting what the plan says first), one per model at a time; unloads.

The scheduler's policy (:func:`helexa.gateway.scheduling.decide`) is the one placer: it says which model goes on
which neuron — for a gang, on which members — and what is evicted on each. This module carries a plan out and
decides nothing: on fresh numbers it only checks that the plan still holds (the victims idle, the model fitting
once they are gone) and raises :class:`PlanOutdated` when it does not, for the policy to plan again. Gangs'
mechanics (all-or-nothing starts, waking, reaping) are :class:`~helexa.gateway.gangs.GangKeeper`'s, which this
module drives and which never calls back.

A load runs as a task of its own, one per model; a caller that gives up does not cancel it. Loads on one neuron
are serialised (a gang's take its members' locks in name order), so two loads never count the same free memory
twice; loads on different neurons run in parallel. Every change to what a neuron holds goes through
:meth:`helexa.gateway.registry.NeuronState.move`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable

import msgspec

from helexa.config import ModelEntry
from helexa.errors import HelexaError
from helexa.gateway.gangs import GangKeeper
from helexa.gateway.metrics import GatewayMetrics
from helexa.gateway.neuron_client import NeuronClient
from helexa.gateway.placement import fits_without
from helexa.gateway.poller import poll_once
from helexa.gateway.registry import NeuronState, Registry
from helexa.gateway.scheduling import Load
from helexa.wire.neuron import LoadRequest, ModelStatus

__all__ = ["Lifecycle", "NoCapacity", "PlanOutdated"]

logger = logging.getLogger(__name__)


class NoCapacity(HelexaError):
    """No healthy neuron can take the model now (503)."""

    status = 503
    code = "no_capacity"


class PlanOutdated(HelexaError):
    """A planned load no longer holds on fresh numbers (a victim got busy, memory changed): plan again (503 if it
    ever reached a client)."""

    status = 503
    code = "no_capacity"


class Lifecycle:
    """Carries out planned loads (evicting as planned), one load per model at a time; unloads models — a gang
    member's whole gang. Which replica serves a request, and what is loaded where, is decided elsewhere."""

    def __init__(
        self,
        registry: Registry,
        clients: dict[str, NeuronClient],
        metrics: GatewayMetrics,
        *,
        full_stop_after_unloads: int = 0,
        load_timeout: float = 900.0,
        drain_grace: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        #: how long an eviction waits for the gateways that route to its victims to hear they are held back (a
        #: cluster's followers; 0 alone)
        self.drain_grace = drain_grace
        self.clients = clients
        self.metrics = metrics
        self.full_stop_after_unloads = full_stop_after_unloads
        self.load_timeout = load_timeout
        self.clock = clock
        self._loads: dict[str, asyncio.Task[str]] = {}
        #: called after every load and unload this gateway made (a cluster's peers look at the neurons at once)
        self.on_change: list[Callable[[], None]] = []
        self._neuron_locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.gangs = GangKeeper(registry, clients, metrics, load_timeout=load_timeout, clock=clock)

    def start(self, entry: ModelEntry, load: Load) -> asyncio.Task[str]:
        """The task loading ``entry`` as ``load`` plans it (started now unless one runs). Its result is the neuron
        that serves it (a gang's head); a plan that went stale raises :class:`PlanOutdated`."""
        task = self._loads.get(entry.id)
        if task is None:
            task = asyncio.create_task(self._run(entry, load), name=f"cold load {entry.id}")
            self._loads[entry.id] = task
            task.add_done_callback(lambda t, model_id=entry.id: self._load_done(model_id, t))
        return task

    def _load_done(self, model_id: str, task: asyncio.Task[str]) -> None:
        self._loads.pop(model_id, None)
        self._changed()
        if not task.cancelled() and task.exception() is not None and not isinstance(task.exception(), PlanOutdated):
            logger.warning("cold load of %s failed: %s", model_id, task.exception())

    def loading(self) -> list[str]:
        """Models with a cold load in progress."""
        return sorted(self._loads)

    # ------------------------------------------------------------------------------------------ loading

    async def _run(self, entry: ModelEntry, load: Load) -> str:
        """Carry ``load`` out: under its neurons' locks, on fresh numbers, check it still holds; unload its victims;
        load (a gang: start or wake its members)."""
        names = sorted({neuron for neuron, _ in load.places})
        async with contextlib.AsyncExitStack() as stack:
            for name in names:  # always in name order: two loads never wait on each other's locks
                await stack.enter_async_context(self._neuron_locks[name])
            if self.drain_grace and any(victims for _, victims in load.places):
                await asyncio.sleep(self.drain_grace)
            # every healthy neuron, fresh: a load another placer began (a leader before this one) is seen
            healthy = [s for s in self.registry.neurons.values() if s.healthy or s.name in names]
            await asyncio.gather(*(poll_once(s, self.clients[s.name]) for s in healthy))
            if replicas := self.registry.replicas(entry.id):
                return replicas[0].name
            self._check(entry, load)
            began = self.clock()
            for neuron, victims in load.places:
                for victim in victims:
                    logger.info("evicting %s from %s to make room for %s", victim, neuron, entry.id)
                    await self.unload(neuron, victim)
                    self.metrics.evictions.labels(victim, neuron).inc()
            if entry.hosts > 1:
                await self.gangs.load(entry, load.members)
            else:
                await self._load_on(self.registry.neurons[load.neuron], entry)
            head = load.neuron
            self.metrics.cold_starts.labels(entry.id, head).inc()
            if any(victims for _, victims in load.places):
                self.metrics.swaps.labels(entry.id, head).inc()
            self.metrics.load_seconds.labels(entry.id, head).observe(self.clock() - began)
            await asyncio.gather(*(poll_once(self.registry.neurons[n], self.clients[n]) for n in names))
            return head

    def _check(self, entry: ModelEntry, load: Load) -> None:
        """:raises PlanOutdated: on fresh numbers the plan does not hold: a neuron is down, a victim is busy or gone
        elsewhere, or the model (a gang: its share) does not fit once the victims are gone; or it is being loaded
        somewhere already."""
        for state in self.registry.neurons.values():
            info = state.models.get(entry.id)
            if state.healthy and info is not None and info.status in (ModelStatus.LOADING, ModelStatus.DOWNLOADING):
                raise PlanOutdated(f"{entry.id} is being loaded on {state.name} already")
        need = self.registry.need(entry)
        if entry.hosts > 1:
            need = need.rank()
        views = {v.name: v for v in self.registry.views()}
        for neuron, victims in load.places:
            view = views.get(neuron)
            if view is None:
                raise PlanOutdated(f"neuron {neuron} is down")
            info = self.registry.neurons[neuron].models.get(entry.id)
            if info is not None and info.status == ModelStatus.SLEEPING:
                continue  # its own engine, asleep: waking it needs nothing more
            if not fits_without(need, view, victims):
                raise PlanOutdated(f"{entry.id} no longer fits on {neuron} with what the plan evicts there")

    async def _load_on(self, state: NeuronState, entry: ModelEntry) -> None:
        logger.info("loading %s on %s", entry.id, state.name)
        state.move(entry.id, ModelStatus.LOADING, harness=entry.harness)
        request = LoadRequest(**msgspec.structs.asdict(entry.spec()))
        try:
            await self.clients[state.name].load(request, self.load_timeout)
        except BaseException:
            state.move(entry.id, None)
            raise
        state.move(entry.id, ModelStatus.LOADED, harness=entry.harness, loaded_at=time.time())
        state.last_used[entry.id] = self.clock()
        state.cycles += 1

    # ------------------------------------------------------------------------------------------ unloading

    async def unload(self, neuron: str, model_id: str) -> None:
        """Unload ``model_id`` from ``neuron``; every ``full_stop_after_unloads`` cycles, a full engine stop. A
        gang member's whole gang is unloaded (or put to sleep through its head)."""
        state = self.registry.neurons[neuron]
        stop = bool(self.full_stop_after_unloads) and state.cycles >= self.full_stop_after_unloads
        if stop:
            logger.info("neuron %s reached %d load/unload cycles: full engine restart", neuron, state.cycles)
            state.cycles = 0
        rank = state.rank(model_id)
        if rank is not None:  # a gang member: the gang goes as one unit
            try:
                await self.gangs.unload(model_id, rank.gang, stop=stop)
            finally:
                self._changed()
            return
        try:
            await self.clients[neuron].unload(model_id, stop=stop)
        finally:
            self._changed()
        state.move(model_id, None)  # gone, or asleep: the next poll says which

    def _changed(self) -> None:
        for callback in self.on_change:
            callback()
