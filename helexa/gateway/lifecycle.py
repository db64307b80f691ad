"""Acting on placement: cold-load (evicting if needed), one load per model at a time; unload.

A load runs as a task of its own, one per model; a caller that gives up does not cancel it. Requests wait for
loads in the scheduler's queue (:mod:`helexa.gateway.queue`), which starts them as its policy planned; an
admin load is placed here. A failed load reaches every waiter with the neuron's own reason (a preflight refusal
stays a structured 422).

Loads on one neuron are serialised and the neuron is re-read right before deciding, so two cold loads never
count the same free memory twice. Loads on different neurons run in parallel.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace

import msgspec

from helexa.config import ModelEntry
from helexa.errors import HelexaError, NotFound, Overloaded
from helexa.gateway.gangs import GangKeeper
from helexa.gateway.metrics import GatewayMetrics
from helexa.gateway.neuron_client import NeuronClient
from helexa.gateway.placement import EvictionPlan, could_fit, fits, place, plan_eviction
from helexa.gateway.poller import poll_once
from helexa.gateway.registry import NeuronState, Registry
from helexa.gateway.scheduling import Load
from helexa.wire.neuron import LoadRequest, ModelInfo, ModelStatus

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
    """Loads models where placement says (evicting as needed), one load per model at a time; unloads them.
    Which replica serves a request is :class:`helexa.gateway.routing.Router`'s."""

    def __init__(
        self,
        registry: Registry,
        clients: dict[str, NeuronClient],
        metrics: GatewayMetrics,
        *,
        strategy: str = "lru",
        full_stop_after_unloads: int = 0,
        load_timeout: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.clients = clients
        self.metrics = metrics
        self.strategy = strategy
        self.full_stop_after_unloads = full_stop_after_unloads
        self.load_timeout = load_timeout
        self.clock = clock
        self._loads: dict[str, asyncio.Task[str]] = {}
        self._neuron_locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.gangs = GangKeeper(
            registry,
            clients,
            metrics,
            strategy=strategy,
            load_timeout=load_timeout,
            locks=self._neuron_locks,
            evict=self.unload,
            no_capacity=NoCapacity,
            clock=clock,
        )

    def start(self, entry: ModelEntry, load: Load | None = None) -> asyncio.Task[str]:
        """The task loading ``entry`` (started now unless one runs): as ``load`` plans it (victims and neuron, from
        the scheduler), or where placement says (``None``; a gang always places its members itself). The task's
        result is the neuron; a planned load whose plan went stale raises :class:`PlanOutdated`."""
        task = self._loads.get(entry.id)
        if task is None:
            task = asyncio.create_task(self._cold_load(entry, load), name=f"cold load {entry.id}")
            self._loads[entry.id] = task
            task.add_done_callback(lambda t, model_id=entry.id: self._load_done(model_id, t))
        return task

    async def ensure_loaded(self, entry: ModelEntry) -> str:
        """Wait for ``entry`` to be loaded somewhere (starting the load if nobody has); return the neuron. A caller
        that gives up does not cancel the load.

        :raises Overloaded: it took longer than ``load_timeout``.
        """
        try:
            return await asyncio.wait_for(asyncio.shield(self.start(entry)), self.load_timeout)
        except TimeoutError:
            raise Overloaded(
                f"model {entry.id!r} is still loading after {self.load_timeout:.0f}s; retry later", retry_after=30
            ) from None

    def _load_done(self, model_id: str, task: asyncio.Task[str]) -> None:
        self._loads.pop(model_id, None)
        if not task.cancelled() and task.exception() is not None and not isinstance(task.exception(), PlanOutdated):
            logger.warning("cold load of %s failed: %s", model_id, task.exception())

    def loading(self) -> list[str]:
        """Models with a cold load in progress."""
        return sorted(self._loads)

    # ------------------------------------------------------------------------------------------ loading

    def _decide(self, entry: ModelEntry) -> EvictionPlan:
        for state in self.registry.neurons.values():  # a sleeping engine wakes in seconds: prefer it
            info = state.models.get(entry.id)
            if state.healthy and info is not None and info.status == ModelStatus.SLEEPING:
                return EvictionPlan(state.name, ())
        need = self.registry.need(entry)
        views = self.registry.views()
        target = place(need, views)
        if target is not None:
            return EvictionPlan(target, ())
        plan = plan_eviction(need, views, self.strategy)
        if plan is not None:
            return plan
        if not any(could_fit(need, v) for v in views):
            healthy = ", ".join(v.name for v in views) or "none"
            raise NoCapacity(
                f"no healthy neuron can hold model {entry.id!r} (harness {entry.harness}, {entry.vram_mb} MiB on "
                f"{need.devices} device(s)); healthy neurons: {healthy}",
                code="no_placement",
            )
        raise NoCapacity(
            f"model {entry.id!r} does not fit now and every model that could make room is pinned or busy; "
            "retry when requests finish",
            headers={"Retry-After": "10"},
        )

    async def _cold_load(self, entry: ModelEntry, load: Load | None) -> str:
        if entry.hosts > 1:
            return await self.gangs.load(entry)
        if load is not None:
            return await self._planned(entry, load)
        for _ in range(3):
            plan = self._decide(entry)
            async with self._neuron_locks[plan.neuron]:
                state = self.registry.neurons[plan.neuron]
                await poll_once(state, self.clients[plan.neuron])  # decide again on fresh numbers
                if self.registry.replicas(entry.id):
                    return self.registry.replicas(entry.id)[0].name
                fresh = self._decide(entry)
                if fresh.neuron != plan.neuron:
                    continue
                await self._swap(state, entry, fresh.victims)
                return plan.neuron
        raise NoCapacity(f"placement for model {entry.id!r} kept changing; retry", headers={"Retry-After": "5"})

    async def _planned(self, entry: ModelEntry, load: Load) -> str:
        """Load as the scheduler planned, on fresh numbers: only its victims may go, and only while idle.

        :raises PlanOutdated: a victim is busy again, or the model does not fit there even without them.
        """
        async with self._neuron_locks[load.neuron]:
            state = self.registry.neurons[load.neuron]
            await poll_once(state, self.clients[load.neuron])
            if replicas := self.registry.replicas(entry.id):
                return replicas[0].name
            info = state.models.get(entry.id)
            if not (state.healthy and info is not None and info.status == ModelStatus.SLEEPING):
                view = next((v for v in self.registry.views() if v.name == load.neuron), None)
                if view is None:
                    raise PlanOutdated(f"neuron {load.neuron} is down")
                allowed = set(load.victims)
                view = replace(
                    view, resident=tuple(replace(m, pinned=m.pinned or m.id not in allowed) for m in view.resident)
                )
                need = self.registry.need(entry)
                fresh = EvictionPlan(view.name, ()) if fits(need, view) else plan_eviction(need, [view], self.strategy)
                if fresh is None:
                    raise PlanOutdated(f"{entry.id} no longer fits on {load.neuron} with what may be evicted there")
                load = Load(entry.id, load.neuron, fresh.victims)
            await self._swap(state, entry, load.victims)
            return load.neuron

    async def _swap(self, state: NeuronState, entry: ModelEntry, victims: tuple[str, ...]) -> None:
        """Unload ``victims`` from ``state``'s neuron, then load ``entry`` there (a swap when there were any)."""
        began = self.clock()
        for victim in victims:
            logger.info("evicting %s from %s to make room for %s", victim, state.name, entry.id)
            await self.unload(state.name, victim)
            self.metrics.evictions.labels(victim, state.name).inc()
        await self._load_on(state, entry)
        self.metrics.cold_starts.labels(entry.id, state.name).inc()
        if victims:
            self.metrics.swaps.labels(entry.id, state.name).inc()
        self.metrics.load_seconds.labels(entry.id, state.name).observe(self.clock() - began)
        await poll_once(state, self.clients[state.name])

    async def _load_on(self, state: NeuronState, entry: ModelEntry) -> None:
        logger.info("loading %s on %s", entry.id, state.name)
        state.models[entry.id] = ModelInfo(id=entry.id, harness=entry.harness, status=ModelStatus.LOADING)
        request = LoadRequest(**msgspec.structs.asdict(entry.spec()))
        try:
            await self.clients[state.name].load(request, self.load_timeout)
        except BaseException:
            state.models.pop(entry.id, None)
            raise
        state.models[entry.id] = ModelInfo(
            id=entry.id, harness=entry.harness, status=ModelStatus.LOADED, loaded_at=time.time()
        )
        state.last_used[entry.id] = self.clock()
        state.cycles += 1

    async def load(self, model_id: str) -> str:
        """Load a catalogue model now (admin); return the neuron. :raises NotFound: not in the catalogue."""
        entry = self.registry.catalogue.get(model_id)
        if entry is None:
            raise NotFound(f"model {model_id!r} is not in the catalogue", code="model_not_found")
        if replicas := self.registry.replicas(entry.id):
            return replicas[0].name
        return await self.ensure_loaded(entry)

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
            await self.gangs.unload(model_id, rank.gang, stop=stop)
            return
        await self.clients[neuron].unload(model_id, stop=stop)
        state.models.pop(model_id, None)
        state.last_used.pop(model_id, None)
