"""The neuron's HTTP handlers: thin — decode, call the model manager or the proxy, encode."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from helexa.engine.process import serves_api
from helexa.errors import Conflict, HelexaError, InvalidRequest, NotFound, UpstreamError
from helexa.neuron.chat_shape import ChatShape, shape_chat_request
from helexa.neuron.gpus import host_info, read_health
from helexa.neuron.proxy import relay
from helexa.neuron.state import (
    discovery_key,
    load_on_demand_key,
    manager_key,
    markers_key,
    max_answer_key,
    neuron_metrics_key,
    session_key,
    started_key,
)
from helexa.server.app import json_response
from helexa.server.body import read_body
from helexa.wire import check_model_id, decode_request_body
from helexa.wire.neuron import (
    PLACER_HEADER,
    EndpointInfo,
    LoadRequest,
    LoadResponse,
    ModelList,
    ModelSpec,
    ModelStatus,
    NeuronHealth,
    UnloadRequest,
)
from helexa.wire.openai import decode_head

__all__ = ["setup_routes"]


_load_decoder = msgspec.json.Decoder(LoadRequest)
_unload_decoder = msgspec.json.Decoder(UnloadRequest)


def _model_id(request: web.Request) -> str:
    try:
        return check_model_id(request.match_info["model_id"])
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="model_id") from None


def _v1_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}/v1"


async def discovery(request: web.Request) -> web.Response:
    """``GET /discovery``."""
    return json_response(request.app[discovery_key])


async def health(request: web.Request) -> web.Response:
    """``GET /health``: live device readings (NVML in a thread)."""
    devices = await asyncio.to_thread(read_health, len(request.app[discovery_key].devices))
    host = await asyncio.to_thread(host_info)
    return json_response(NeuronHealth(uptime_s=time.monotonic() - request.app[started_key], devices=devices, host=host))


async def list_models(request: web.Request) -> web.Response:
    """``GET /models``."""
    return json_response(ModelList(models=await request.app[manager_key].list(request.app[session_key])))


async def load(request: web.Request) -> web.Response:
    """``POST /models/load``: 200 when loaded, 202 with ``wait = false``, 422 when preflight refuses."""
    req = decode_request_body(_load_decoder, await read_body(request))
    manager = request.app[manager_key]
    spec = manager.specs.from_request(ModelSpec(**{f: getattr(req, f) for f in ModelSpec.__struct_fields__}))
    if not req.wait:
        record = await manager.start_load(spec)
        answer = LoadResponse(model_id=record.spec.model_id, status=record.status, rank=record.spec.rank)
        return json_response(answer, status=202)
    record = await manager.load(spec)
    endpoint = _v1_url(request) if serves_api(record.spec) else ""
    answer = LoadResponse(model_id=record.spec.model_id, status=record.status, endpoint=endpoint, rank=record.spec.rank)
    return json_response(answer)


async def unload(request: web.Request) -> web.Response:
    """``POST /models/unload``."""
    req = decode_request_body(_unload_decoder, await read_body(request))
    record = await request.app[manager_key].unload(req.model_id, stop=req.stop or req.full)
    status = record.status if record.status == ModelStatus.SLEEPING else ModelStatus.UNLOADED
    return json_response(LoadResponse(model_id=record.spec.model_id, status=status))


async def endpoint(request: web.Request) -> web.Response:
    """``GET /models/{id}/endpoint``: the neuron's own /v1, once the model is loaded."""
    model_id = _model_id(request)
    record = request.app[manager_key].get(model_id)
    if record is None or record.status != ModelStatus.LOADED:
        raise NotFound(f"model {model_id!r} is not loaded on this neuron", code="model_not_loaded")
    return json_response(EndpointInfo(url=_v1_url(request)))


async def logs(request: web.Request) -> web.Response:
    """``GET /models/{id}/logs?lines=N``: the engine's recent output, as text."""
    model_id = _model_id(request)
    manager = request.app[manager_key]
    record = manager.get(model_id)
    if record is None:
        raise NotFound(f"model {model_id!r} is not known to this neuron", code="model_not_found")
    try:
        lines = int(request.query.get("lines", "200"))
    except ValueError:
        raise InvalidRequest("lines must be a whole number", param="lines") from None
    text = "\n".join(manager.harnesses[record.harness].logs(record.spec.model_id, max(lines, 1)))
    return web.Response(text=text + "\n" if text else "", content_type="text/plain")


async def openai_models(request: web.Request) -> web.Response:
    """``GET /v1/models``: the models loaded here, in OpenAI's list shape."""
    data = [
        {"id": r.spec.model_id, "object": "model", "created": int(r.loaded_at), "owned_by": "helexa"}
        for r in request.app[manager_key].records.values()
        if r.status == ModelStatus.LOADED
    ]
    return json_response({"object": "list", "data": data})


async def inference(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions|completions|embeddings|rerank|score``: relay to the model's engine.

    An unloaded catalogue model is loaded first when ``load_on_demand`` is on and the request does not come from
    a gateway (which places models itself: :data:`~helexa.wire.neuron.PLACER_HEADER`); otherwise 404
    ``model_not_found``.
    """
    body = await read_body(request)
    head = decode_head(body, request.path)
    app = request.app
    manager = app[manager_key]
    record = manager.get(head.model)
    if record is None or record.status != ModelStatus.LOADED:
        spec = manager.specs.spec_for(head.model)
        if spec is None or not app[load_on_demand_key] or PLACER_HEADER in request.headers:
            state = f" (status: {record.status})" if record is not None else ""
            raise NotFound(
                f"model {head.model!r} is not loaded on this neuron{state}; load it with POST /models/load",
                param="model",
                code="model_not_found",
            )
        record = await manager.load(spec)
    if not serves_api(record.spec):
        assert record.spec.rank is not None
        raise Conflict(
            f"this neuron runs rank {record.spec.rank.rank} of model {head.model!r}'s gang, which serves no API; "
            f"send requests to the head ({record.spec.rank.master_addr}) or through the gateway",
            code="gang_follower",
        )
    metrics = app[neuron_metrics_key]
    endpoint_name = request.path.removeprefix("/v1/")
    model = record.spec.model_id
    url = record.endpoint.removesuffix("/v1") + request.path
    status = 500
    metrics.in_flight.labels(model).inc()
    chat = endpoint_name == "chat/completions"
    shape = shape_chat_request(body, record.spec, merge_learned=record.merge_system) if chat else ChatShape(body)
    try:
        async with manager.serving(record):
            response = await relay(
                request,
                app[session_key],
                url,
                shape.body,
                normalise=record.spec.normalise and chat,
                markers=app[markers_key],
                offered=shape.offered,
                fallback=shape.fallback,
                on_fallback=lambda: setattr(record, "merge_system", True),
                max_answer=app[max_answer_key],
            )
            status = response.status
            return response
    finally:
        metrics.in_flight.labels(model).dec()
        metrics.requests.labels(model, endpoint_name, str(status)).inc()


class _TokenizeRequest(msgspec.Struct):
    model: str
    messages: list[dict[str, Any]]
    tools: list[Any] = []


_tokenize_decoder = msgspec.json.Decoder(_TokenizeRequest)


async def tokenize(request: web.Request) -> web.Response:
    """``POST /tokenize`` ``{model, messages, tools?}`` → ``{"count": n}``, with the engine's own tokenizer."""
    req = decode_request_body(_tokenize_decoder, await read_body(request))
    app = request.app
    manager = app[manager_key]
    record = manager.get(req.model)
    if record is None or record.status != ModelStatus.LOADED:
        raise NotFound(f"model {req.model!r} is not loaded on this neuron", param="model", code="model_not_found")
    harness = manager.harnesses[record.harness]
    try:
        count = await harness.count_tokens(app[session_key], record.endpoint, req.messages, req.tools)
    except NotImplementedError as exc:
        raise HelexaError(str(exc), code="not_implemented", status_override=501) from None
    except (aiohttp.ClientError, KeyError, ValueError) as exc:
        raise UpstreamError(f"the engine could not count tokens: {exc!r}") from None
    return json_response({"model": record.spec.model_id, "count": count})


def setup_routes(app: web.Application) -> None:
    """Attach the neuron API to ``app``."""
    r = app.router
    r.add_get("/discovery", discovery)
    r.add_get("/health", health)
    r.add_get("/models", list_models)
    r.add_post("/models/load", load)
    r.add_post("/models/unload", unload)
    r.add_get("/models/{model_id:.+}/endpoint", endpoint)
    r.add_get("/models/{model_id:.+}/logs", logs)
    r.add_post("/tokenize", tokenize)
    r.add_get("/v1/models", openai_models)
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank", "/v1/score"):
        r.add_post(path, inference)
