"""The merged model list (``GET /v1/models``) and the fleet report (``GET /fleet``). Pure views."""

from __future__ import annotations

from typing import Any

from helexa.gateway.placement import could_fit
from helexa.gateway.registry import Registry
from helexa.wire.neuron import ModelStatus

__all__ = ["fleet_report", "model_cards"]


def model_cards(registry: Registry, loading: list[str]) -> list[dict[str, Any]]:
    """Every model loaded on a healthy neuron, then every catalogue model with a valid placement.

    OpenAI ``model`` objects plus helexa's fields: ``status`` (``loaded``, ``loading`` or ``available``),
    ``loaded_on`` (neuron names) and ``aliases``.
    """
    cards: dict[str, dict[str, Any]] = {}
    for state in registry.neurons.values():
        if not state.healthy:
            continue
        for model_id, info in state.models.items():
            if info.status not in (ModelStatus.LOADED, ModelStatus.LOADING):
                continue
            card = cards.setdefault(model_id, _card(registry, model_id, int(info.loaded_at)))
            if info.status == ModelStatus.LOADED:
                card["loaded_on"].append(state.name)
                card["status"] = "loaded"
            elif card["status"] != "loaded":
                card["status"] = "loading"
    views = registry.views()
    for entry in registry.entries:
        if entry.id in cards:
            continue
        need = registry.need(entry)
        if any(could_fit(need, v) for v in views):
            cards[entry.id] = _card(registry, entry.id, 0)
    for model_id in loading:
        if model_id in cards and cards[model_id]["status"] != "loaded":
            cards[model_id]["status"] = "loading"
    return list(cards.values())


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
                    }
                    for m in state.models.values()
                ],
            }
        )
    return {"neurons": neurons, "models": model_cards(registry, loading), "loading": loading}
