"""Idle unloads: after every poll, models nobody used for their ``idle_unload_seconds`` are unloaded (put to sleep
where the harness has a sleep tier), unless pinned there, busy or waited for — a gang as one unit. In a cluster
only the leader sweeps, with every gateway's last use merged into its registry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import replace

from helexa.errors import HelexaError
from helexa.gateway.lifecycle import Lifecycle
from helexa.gateway.metrics import GatewayMetrics
from helexa.gateway.registry import Registry
from helexa.gateway.scheduling import idle_unloads
from helexa.wire.neuron import ModelStatus

__all__ = ["IdleUnloads"]

logger = logging.getLogger(__name__)


class IdleUnloads:
    """Which loaded models went idle, and their unloads; ``idle_seconds`` (``[eviction]``) applies to catalogue
    models without their own ``idle_unload_seconds``."""

    def __init__(
        self,
        registry: Registry,
        lifecycle: Lifecycle,
        metrics: GatewayMetrics,
        *,
        idle_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry, self.lifecycle, self.metrics, self.clock = registry, lifecycle, metrics, clock
        #: model -> seconds idle before it is unloaded (0: never)
        self.idle_seconds = {
            e.id: idle_seconds if e.idle_unload_seconds is None else e.idle_unload_seconds for e in registry.entries
        }

    def candidates(self, busy: Collection[str]) -> list[tuple[str, str]]:
        """``(neuron, model)`` pairs idle long enough to unload now, none of ``busy`` (waited for, loading,
        held back); one pair per gang."""
        if not any(self.idle_seconds.values()):
            return []
        now = self.clock()
        for state in self.registry.neurons.values():  # the gateway counts idleness from when it first saw a model
            for model_id, info in state.models.items():
                if info.status == ModelStatus.LOADED:
                    state.last_used.setdefault(model_id, now)
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

    async def unload(self, pairs: list[tuple[str, str]], holding: Callable[[tuple[str, str], bool], bool]) -> None:
        """Unload ``pairs`` one by one; ``holding(pair, True)`` before each (False back: skip it, it got busy),
        ``holding(pair, False)`` after."""
        for pair in pairs:
            if not holding(pair, True):
                continue
            neuron, model_id = pair
            try:
                state = self.registry.neurons[neuron]
                idle = self.clock() - state.last_used.get(model_id, self.clock())
                logger.info("unloading %s from %s: idle for %.0fs", model_id, neuron, idle)
                await self.lifecycle.unload(neuron, model_id)
                self.metrics.idle_unloads.labels(model_id, neuron).inc()
            except HelexaError as exc:
                logger.warning("idle unload of %s from %s failed: %s", model_id, neuron, exc.message)
            finally:
                holding(pair, False)
