"""``/admin``: loading, unloading, engine logs and everyone's batches, as a sub-application that owns its guard
(an admin key, when keys are configured)."""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from helexa.errors import InvalidRequest, NotFound
from helexa.gateway.batch_routes import admin_cancel_batch, admin_list_batches
from helexa.gateway.queue import Client
from helexa.gateway.scheduling import INTERACTIVE
from helexa.gateway.state import lifecycle_key, router_key
from helexa.server.app import json_response
from helexa.server.middlewares import Guard, guard_middleware

__all__ = ["ADMIN", "load_model", "make_admin_app"]

ADMIN = Client("admin", INTERACTIVE)  # how an operator's load waits in the queue


def make_admin_app(guards: Sequence[Guard]) -> web.Application:
    """The ``/admin`` sub-application; ``guards`` admit its requests (an admin-scoped key guard, or none)."""
    app = web.Application(middlewares=[guard_middleware(guards)] if guards else [])
    r = app.router
    r.add_post("/models/{model_id:.+}/load", admin_load)
    r.add_post("/models/{model_id:.+}/unload", admin_unload)
    r.add_get("/models/{model_id:.+}/logs", admin_logs)
    r.add_get("/batches", admin_list_batches)
    r.add_post("/batches/{batch_id}/cancel", admin_cancel_batch)
    return app


async def admin_load(request: web.Request) -> web.Response:
    """``POST /admin/models/{id}/load``: load a catalogue model now (placed, as every load, by the scheduler)."""
    model_id, neuron = await load_model(request, request.match_info["model_id"])
    return json_response({"model": model_id, "status": "loaded", "neuron": neuron})


async def load_model(request: web.Request, requested: str) -> tuple[str, str]:
    """Have ``requested`` (an id or alias of the catalogue) served somewhere — through the scheduler's queue, at
    the admin's priority, like any request that finds it unloaded; ``(model id, neuron)``.

    :raises NotFound: not in the catalogue (nor loaded anywhere).
    """
    router = request.config_dict[router_key]
    model_id = router.registry.resolve(requested)
    if model_id not in router.registry.catalogue and not router.registry.replicas(model_id):
        raise NotFound(f"model {model_id!r} is not in the catalogue", code="model_not_found")
    model_id, state = await router.route(model_id, client=ADMIN)
    return model_id, state.name


async def admin_unload(request: web.Request) -> web.Response:
    """``POST /admin/models/{id}/unload``: unload a model from every neuron that has it."""
    lifecycle = request.config_dict[lifecycle_key]
    model_id = lifecycle.registry.resolve(request.match_info["model_id"])
    holders = [n.name for n in lifecycle.registry.neurons.values() if model_id in n.models]
    if not holders:
        raise NotFound(f"model {model_id!r} is not loaded on any neuron", code="model_not_loaded")
    for name in holders:
        await lifecycle.unload(name, model_id)
    return json_response({"model": model_id, "status": "unloaded", "neurons": holders})


async def admin_logs(request: web.Request) -> web.Response:
    """``GET /admin/models/{id}/logs?lines=N[&neuron=NAME][&rank=R]``: the engine's recent output from the neuron
    that runs the model (or tried to) — for a gang, the one running rank ``R`` — as text."""
    lifecycle = request.config_dict[lifecycle_key]
    model_id = lifecycle.registry.resolve(request.match_info["model_id"])
    try:
        lines = max(1, min(int(request.query.get("lines", "200")), 10_000))
    except ValueError:
        raise InvalidRequest("lines must be a whole number", param="lines") from None
    wanted = request.query.get("neuron", "")
    rank = request.query.get("rank", "")
    if rank and not (rank.isdigit() and len(rank) < 4):
        raise InvalidRequest("rank must be a gang member's number (0 = the head)", param="rank")
    holders = [
        n.name
        for n in lifecycle.registry.neurons.values()
        if model_id in n.models
        and (not wanted or n.name == wanted)
        and (not rank or ((r := n.rank(model_id)) is not None and r.rank == int(rank)))
    ]
    if not holders:
        where = f" on neuron {wanted!r}" if wanted else " on any neuron"
        where += f" as rank {rank}" if rank else ""
        raise NotFound(f"model {model_id!r} has no engine log{where}", code="model_not_loaded")
    text = await lifecycle.clients[holders[0]].logs(model_id, lines)
    return web.Response(text=f"# neuron {holders[0]}, model {model_id}\n{text}", content_type="text/plain")
