"""The merged model list (``GET /v1/models``) and the fleet report (``GET /fleet``). Pure views."""

from __future__ import annotations

from typing import Any

import msgspec

from helexa.gateway.placement import could_fit
from helexa.gateway.registry import NeuronState, Registry
from helexa.wire.neuron import RESIDENT, ModelInfo, ModelStatus

__all__ = ["fleet_report", "gang_members", "model_cards"]


def model_cards(registry: Registry, loading: list[str]) -> list[dict[str, Any]]:
    """Every model running or starting on a healthy neuron, then every catalogue model.

    OpenAI ``model`` objects plus helexa's fields: ``status`` — ``loaded``, ``loading``, ``downloading`` (with
    ``download``: bytes done, total, rate), ``available`` (loadable now), ``download`` (its files must be
    fetched first: ``download_bytes``) or ``unavailable`` (``unavailable_kind`` says why: a preflight kind,
    or ``no_placement`` when no neuron could hold it) — ``loaded_on`` (neuron names) and ``aliases``.
    """
    cards: dict[str, dict[str, Any]] = {}
    for state in registry.neurons.values():
        if not state.healthy:
            continue
        for model_id, info in state.models.items():
            if info.status not in RESIDENT:
                continue
            card = cards.setdefault(model_id, _card(registry, model_id, int(info.loaded_at)))
            _resident(card, registry, state, info)
    views = registry.views()
    for entry in registry.entries:
        if entry.id in cards:
            continue
        card = cards[entry.id] = _card(registry, entry.id, 0)
        need = registry.need(entry)
        fits = {v.name for v in views if could_fit(need, v)}
        if not fits:
            card.update(status="unavailable", unavailable_kind="no_placement")
            continue
        _availability(card, [state.models.get(entry.id) for name, state in registry.neurons.items() if name in fits])
    for model_id in loading:
        if model_id in cards and cards[model_id]["status"] not in ("loaded", "downloading"):
            cards[model_id]["status"] = "loading"
    for entry in registry.entries:
        if entry.hosts > 1:
            cards[entry.id]["hosts"] = entry.hosts
            cards[entry.id]["members"] = gang_members(registry, entry.id, entry.vram_mb, entry.hosts)
    return list(cards.values())


def gang_members(registry: Registry, model_id: str, vram_mb: int, hosts: int) -> list[dict[str, Any]]:
    """The members of ``model_id``'s gangs, by gang then rank: neuron, rank, status and the memory each holds."""
    share = -(-vram_mb // hosts)
    return [
        {
            "gang": gang.gang,
            "neuron": m.neuron.name,
            "rank": m.rank.rank,
            "status": str(m.info.status),
            "memory_mb": share,
            "healthy": m.neuron.healthy,
        }
        for gang in registry.gangs(model_id)
        for m in gang.members
    ]


def _resident(card: dict[str, Any], registry: Registry, state: NeuronState, info: ModelInfo) -> None:
    """Add what ``state`` says of a model it holds to the model's card: where it serves, or how far it is."""
    if info.status == ModelStatus.LOADED and (info.rank is None or state in registry.replicas(info.id)):
        card["loaded_on"].append(state.name)  # a gang serves through its head, once every rank is up
        card["status"] = "loaded"
    elif card["status"] != "loaded":
        card["status"] = "loading" if info.status == ModelStatus.LOADED else str(info.status)
        if info.download is not None:
            card["download"] = msgspec.to_builtins(info.download)


def _availability(card: dict[str, Any], infos: list[ModelInfo | None]) -> None:
    """The best the neurons that could hold a model say of it: loadable now, after a download, or not at all."""
    known = [i for i in infos if i is not None and i.availability]
    if not known or any(i.availability == "local" for i in known) or len(known) < len(infos):
        return  # "available": files here, or a neuron that has not said (it would check at load time)
    downloads = [i.download_bytes for i in known if i.availability == "download"]
    if downloads:
        card.update(status="download", download_bytes=min(downloads))
        return
    card.update(status="unavailable", unavailable_kind=known[0].unavailable_kind)


def _card(registry: Registry, model_id: str, created: int) -> dict[str, Any]:
    entry = registry.catalogue.get(model_id)
    return {
        "id": model_id,
        "object": "model",
        "created": created,
        "owned_by": "helexa",
        "status": "available",
        "loaded_on": [],
        "aliases": list(entry.aliases) if entry else [],
        "quant": entry.quant if entry else "",
    }


def fleet_report(registry: Registry, loading: list[str]) -> dict[str, Any]:
    """Neurons (health, devices, VRAM, models) and the merged models, for ``GET /fleet`` and ``helexa status``."""
    neurons = []
    for state in registry.neurons.values():
        disc, health = state.discovery, state.health
        used = {h.index: h for h in (health.devices if health else [])}
        neurons.append(
            {
                "name": state.name,
                "endpoint": state.ref.endpoint,
                "healthy": state.healthy,
                "last_error": state.last_error,
                "hostname": disc.hostname if disc else "",
                "version": disc.version if disc else "",
                "harnesses": disc.harnesses if disc else [],
                "engines": disc.engines if disc else {},
                "devices": [
                    {
                        "index": d.index,
                        "name": d.name,
                        "vram_total_mb": d.vram_total_mb,
                        "vram_used_mb": used[d.index].vram_used_mb if d.index in used else 0,
                        "utilization_pct": used[d.index].utilization_pct if d.index in used else 0,
                    }
                    for d in (disc.devices if disc else [])
                ],
                "host": (health.host if health else disc.host if disc else None),
                "models": [
                    {
                        "id": m.id,
                        "status": m.status,
                        "harness": m.harness,
                        "in_flight": state.in_flight.get(m.id, 0),
                        "last_error": m.last_error,
                        "download": msgspec.to_builtins(m.download) if m.download is not None else None,
                        "rank": msgspec.to_builtins(m.rank) if m.rank is not None else None,
                    }
                    for m in state.models.values()
                ],
            }
        )
    return {"neurons": neurons, "models": model_cards(registry, loading), "loading": loading}
