"""What the scheduling policy sees of the fleet — a :class:`~helexa.gateway.scheduling.Fleet` built from the registry
and the scheduler's own state — and what its refusals tell a client. No I/O."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace

from helexa.errors import HelexaError, NotFound
from helexa.gateway.lifecycle import NoCapacity
from helexa.gateway.placement import ResidentModel, could_fit
from helexa.gateway.registry import Registry
from helexa.gateway.scheduling import Fleet, Waiter
from helexa.wire.neuron import ModelStatus

__all__ = ["fleet_view", "refusal"]


def fleet_view(
    registry: Registry,
    waiting: Sequence[Waiter],
    *,
    admitted: Mapping[tuple[str, str], int],
    leaving: Mapping[str, Collection[str]],
    loading: Collection[str],
    claimed: Collection[str],
) -> Fleet:
    """The fleet as the policy sees it for ``waiting``: ``admitted`` — (neuron, model) -> requests admitted and not
    yet sent (busy all the same) —, ``leaving`` — model -> neurons whose replica is being unloaded (it serves no
    more) —, the models this gateway is ``loading`` and the neurons those loads ``claimed``."""
    models = {w.model for w in waiting}
    views = registry.views()
    if admitted:
        views = [
            replace(v, resident=tuple(_plus(r, admitted.get((v.name, r.id), 0)) for r in v.resident)) for v in views
        ]
    serving: dict[str, frozenset[str]] = {}
    busy: dict[tuple[str, str], int] = {}
    for model in models:
        gone = leaving.get(model, ())
        replicas = [n for n in registry.replicas(model) if n.name not in gone]
        if replicas:
            serving[model] = frozenset(n.name for n in replicas)
        for n in replicas:  # through this gateway, queued in the engine, admitted and not yet sent
            queued = n.in_flight.get(model, 0) + n.models[model].waiting + admitted.get((n.name, model), 0)
            busy[(n.name, model)] = queued
    loading, claimed = set(loading), set(claimed)
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
    sleeping = {m: found for m in models if (found := _asleep(registry, m))}
    return Fleet(tuple(views), serving, frozenset(loading), frozenset(claimed), sleeping, needs, used, busy)


def _asleep(registry: Registry, model_id: str) -> tuple[str, ...]:
    """Where ``model_id`` sleeps on healthy neurons: one neuron, or a gang's members in rank order (the head
    first); empty when it sleeps nowhere."""
    for gang in registry.gangs(model_id):
        if gang.sleeping:
            return tuple(m.neuron.name for m in gang.members)
    for state in registry.neurons.values():
        info = state.models.get(model_id)
        if state.healthy and info is not None and info.rank is None and info.status == ModelStatus.SLEEPING:
            return (state.name,)
    return ()


def _plus(model: ResidentModel, requests: int) -> ResidentModel:
    """``model`` with ``requests`` more in flight."""
    return replace(model, in_flight=model.in_flight + requests) if requests else model


def refusal(registry: Registry, model_id: str, reason: str) -> HelexaError:
    """The error a request gets when the policy refuses it for ``reason`` (``not_found``, ``no_placement``,
    ``no_room``)."""
    if reason == "not_found":
        return NotFound(f"model {model_id!r} is no longer loaded anywhere", param="model", code="model_not_found")
    if reason == "no_placement":
        entry = registry.catalogue.get(model_id)
        if entry is not None and entry.hosts > 1:
            rank = registry.need(entry).rank()
            joining = [v for v in registry.views() if v.multi_host]
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
