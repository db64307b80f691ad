"""The merged model list (``GET /v1/models``) and the fleet report (``GET /fleet``). Pure views."""

from __future__ import annotations

import enum
from typing import Any

import msgspec

from helexa.gateway.placement import Need, NeuronView, could_fit
from helexa.gateway.registry import NeuronState, Registry
from helexa.wire.neuron import RESIDENT, ModelInfo, ModelStatus

__all__ = ["PRECEDENCE", "CardStatus", "fleet_report", "gang_members", "model_cards"]


class CardStatus(enum.StrEnum):
    """A model card's ``status``: what a client can expect if it asks for the model now."""

    LOADED = "loaded"  # served now; loaded_on names where (a gang: its head, once every rank is up)
    DOWNLOADING = "downloading"  # a load is fetching its files (download: bytes done, total, rate)
    LOADING = "loading"  # a load is starting its engine (a gang: until every rank is up)
    AVAILABLE = "available"  # loadable now: its files are on a neuron that can hold it, or one will check
    NEEDS_DOWNLOAD = "needs_download"  # loadable after its files are fetched (download_bytes); was "download"
    UNAVAILABLE = "unavailable"  # no neuron can run it (unavailable_kind: a preflight kind, or no_placement)


#: When neurons say different things of one model, its card shows the first of these that any of them says.
PRECEDENCE = tuple(CardStatus)
_RANK = {status: i for i, status in enumerate(PRECEDENCE)}
#: A neuron's model status as a card status (statuses that hold no memory do not make a card on their own).
_FROM_NEURON = {
    ModelStatus.LOADED: CardStatus.LOADED,
    ModelStatus.DOWNLOADING: CardStatus.DOWNLOADING,
    ModelStatus.LOADING: CardStatus.LOADING,
}


def model_cards(registry: Registry, loading: list[str]) -> list[dict[str, Any]]:
    """Every model running or starting on a healthy neuron, then every catalogue model.

    OpenAI ``model`` objects plus helexa's fields: ``status`` (a :class:`CardStatus`; ``download`` with
    ``downloading``, ``download_bytes`` with ``needs_download``, ``unavailable_kind`` with ``unavailable``),
    ``loaded_on`` (neuron names), ``aliases``, ``context_length`` (tokens one request may use, as the engines
    said: once the model ran); a gang model's ``hosts`` and ``members``.
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
        fits = _holders(registry.need(entry), views)
        if not fits:
            _set(card, CardStatus.UNAVAILABLE, unavailable_kind="no_placement")
            continue
        _availability(card, [state.models.get(entry.id) for name, state in registry.neurons.items() if name in fits])
    for model_id in loading:
        if model_id in cards:
            _set(card := cards[model_id], min(CardStatus(card["status"]), CardStatus.LOADING, key=_RANK.get))
    _extras(registry, cards)
    return list(cards.values())


def _extras(registry: Registry, cards: dict[str, dict[str, Any]]) -> None:
    """What some cards add: the context length the engines said (clients size their prompts by it), a gang's
    hosts and members."""
    for model_id, card in cards.items():
        if context := registry.context_lengths.get(model_id):
            card["context_length"] = context
    for entry in registry.entries:
        if entry.hosts > 1:
            cards[entry.id]["hosts"] = entry.hosts
            cards[entry.id]["members"] = gang_members(registry, entry.id, entry.vram_mb, entry.hosts)


def _holders(need: Need, views: list[NeuronView]) -> set[str]:
    """The neurons that could hold ``need`` if nothing else ran there — for a gang, the neurons that join gangs
    and could hold a rank, when there are enough of them; empty when nothing could."""
    if need.hosts < 2:
        return {v.name for v in views if could_fit(need, v)}
    fits = {v.name for v in views if v.multi_host and could_fit(need.rank(), v)}
    return fits if len(fits) >= need.hosts else set()


def _set(card: dict[str, Any], status: CardStatus, **fields: Any) -> None:
    card["status"] = str(status)
    card.update(fields)


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
    status = _FROM_NEURON[info.status]
    if status == CardStatus.LOADED and info.rank is not None and state not in registry.replicas(info.id):
        status = CardStatus.LOADING  # a gang's follower, or a gang that is not (or no longer) complete
    if status == CardStatus.LOADED:
        card["loaded_on"].append(state.name)
    if _RANK[status] < _RANK[CardStatus(card["status"])]:
        _set(card, status)
        if info.download is not None:
            card["download"] = msgspec.to_builtins(info.download)


def _availability(card: dict[str, Any], infos: list[ModelInfo | None]) -> None:
    """The best the neurons that could hold a model say of it: loadable now, after a download, or not at all."""
    known = [i for i in infos if i is not None and i.availability]
    if not known or any(i.availability == "local" for i in known) or len(known) < len(infos):
        return  # "available": files here, or a neuron that has not said (it would check at load time)
    downloads = [i.download_bytes for i in known if i.availability == "download"]
    if downloads:
        _set(card, CardStatus.NEEDS_DOWNLOAD, download_bytes=min(downloads))
        return
    _set(card, CardStatus.UNAVAILABLE, unavailable_kind=known[0].unavailable_kind)


def _card(registry: Registry, model_id: str, created: int) -> dict[str, Any]:
    entry = registry.catalogue.get(model_id)
    return {
        "id": model_id,
        "object": "model",
        "created": created,
        "owned_by": "helexa",
        "status": str(CardStatus.AVAILABLE),
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
