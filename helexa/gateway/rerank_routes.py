"""Ranking documents for a query: ``/v1/rerank`` (Jina's shape, and Cohere's v1 client), ``/rerank``, ``/v2/rerank``
(Cohere's v2 client) and ``/v1/score`` (vLLM's), with a catalogue model started for it (``task = "rerank"``:
llama.cpp ``--reranking``, vLLM's pooling runner), routed, cold-loaded, evicted and metered like a chat model.

A rerank is asked of the engine as ``{query, documents}`` with plain texts (an engine's own ``/v1/rerank``: llama.cpp
and vLLM both serve it), and the answer is built here, the same for every client: results ordered by relevance,
cut to ``top_n``, each with its document's text when ``return_documents`` (by default on ``/v1/rerank`` and
``/rerank``, as Jina and vLLM answer; off on ``/v2/rerank``, as Cohere's v2 does), plus ``usage`` and Cohere's
``meta``. ``/v1/score`` is vLLM's own API, relayed as it is; llama.cpp has none (400).
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated

import msgspec
from aiohttp import web

from helexa.errors import InvalidRequest, UpstreamError
from helexa.gateway.forward import Caller, Forward, observe, reserve_tokens
from helexa.gateway.neuron_client import error_from_response
from helexa.gateway.proxy import Exchange, Usage, prepare_body, relay
from helexa.gateway.queue import client_of
from helexa.gateway.registry import Registry
from helexa.gateway.state import router_key
from helexa.server.app import json_response
from helexa.server.body import read_body
from helexa.wire import WireStruct, decode_request_body
from helexa.wire.openai import decode_head

__all__ = ["rank", "setup_rerank_routes"]

MAX_DOCUMENTS = 10_000  # documents in one request, at most (Cohere's limit is 1,000 per request; engines batch them)
_encoder = msgspec.json.Encoder()


class Document(msgspec.Struct):
    """A document given as an object (Cohere v1, Jina): its ``text``."""

    text: str


class RerankRequest(WireStruct):
    """What helexa reads of a rerank request (Jina, Cohere v1 and v2, vLLM): other fields are ignored."""

    model: str
    query: str
    documents: Annotated[list[str | Document], msgspec.Meta(max_length=MAX_DOCUMENTS)]
    top_n: Annotated[int, msgspec.Meta(ge=1)] | None = None
    return_documents: bool | None = None


class _Result(msgspec.Struct):
    index: int
    relevance_score: float


class _EngineAnswer(msgspec.Struct):
    results: list[_Result]
    usage: Usage | None = None


_request_decoder = msgspec.json.Decoder(RerankRequest)
_answer_decoder = msgspec.json.Decoder(_EngineAnswer)


def _check_task(registry: Registry, requested: str) -> None:
    """:raises InvalidRequest: ``model_cannot_rerank``: the catalogue says the model is started for something
    else (a model outside the catalogue is tried: its engine answers for itself)."""
    entry = registry.catalogue.get(requested)
    if entry is not None and entry.task != "rerank":
        raise InvalidRequest(
            f'model {requested!r} is started for {entry.task!r}, not to rerank: use a model with task = "rerank" '
            "in the catalogue",
            param="model",
            code="model_cannot_rerank",
        )


async def rank(request: Caller, raw: bytes, *, version: str = "1", documents_by_default: bool = True) -> dict:
    """Rank the documents of the rerank request ``raw`` for ``request`` (an HTTP request, or a batch's line): the
    answer every rerank route gives.

    :raises HelexaError: the request is invalid, the model cannot rerank, or its engine failed.
    """
    req = decode_request_body(_request_decoder, raw)
    if not req.documents:
        raise InvalidRequest("documents: give at least one document to rank", param="documents")
    router = request.app[router_key]
    _check_task(router.registry, req.model)
    texts = [d if isinstance(d, str) else d.text for d in req.documents]
    await reserve_tokens(request, len(raw), None)
    exchange = Exchange(started=time.perf_counter())
    model_id, state = await router.route(req.model, client=client_of(request))
    body = _encoder.encode({"model": model_id, "query": req.query, "documents": texts, "top_n": len(texts)})
    async with Forward(request, model_id, state, path="/v1/rerank", body=body, exchange=exchange) as (up, state):
        data = await up.read()
        if up.status != 200:
            raise error_from_response(up.label, up.status, data)
        try:
            answer = _answer_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise UpstreamError(f"{up.label} answered a rerank with something else: {exc}"[:300]) from None
        exchange.usage = answer.usage
    observe(request, model_id, state.name, exchange)
    if any(not 0 <= r.index < len(texts) for r in answer.results):
        raise UpstreamError(f"{state.name}'s engine ranked documents that were not asked about")
    ranked = sorted(answer.results, key=lambda r: -r.relevance_score)[: req.top_n or len(texts)]
    with_documents = documents_by_default if req.return_documents is None else req.return_documents
    results = [
        {"index": r.index, "relevance_score": r.relevance_score}
        | ({"document": {"text": texts[r.index]}} if with_documents else {})
        for r in ranked
    ]
    usage = answer.usage or Usage()
    return {
        "id": f"rerank-{secrets.token_hex(12)}",
        "model": req.model,
        "results": results,
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
        "meta": {"api_version": {"version": version}, "billed_units": {"search_units": 1}},
    }


async def rerank_v1(request: web.Request) -> web.Response:
    """``POST /v1/rerank`` and ``/rerank`` (Jina, Cohere v1, vLLM): documents returned unless told not to."""
    return json_response(await rank(request, await read_body(request), version="1", documents_by_default=True))


async def rerank_v2(request: web.Request) -> web.Response:
    """``POST /v2/rerank`` (Cohere v2): documents returned only when asked."""
    return json_response(await rank(request, await read_body(request), version="2", documents_by_default=False))


async def score(request: web.Request) -> web.StreamResponse:
    """``POST /v1/score`` (vLLM's: ``text_1``/``text_2``, ``queries``/``documents``): relayed as it is to a vLLM
    engine started to rerank; llama.cpp has no score API (400)."""
    raw = await read_body(request)
    head = decode_head(raw, "/v1/score")
    router = request.app[router_key]
    _check_task(router.registry, head.model)
    entry = router.registry.catalogue.get(head.model)
    if entry is not None and entry.harness == "llamacpp":
        raise InvalidRequest(
            f"model {head.model!r} runs on llama.cpp, which has no score API: rank its documents with /v1/rerank",
            param="model",
            code="score_unsupported",
        )
    await reserve_tokens(request, len(raw), None)
    exchange = Exchange(started=time.perf_counter())
    model_id, state = await router.route(head.model, client=client_of(request))
    body, _ = prepare_body(raw, head.model, model_id, stream=False, wants_usage=False)
    async with Forward(request, model_id, state, path="/v1/score", body=body, exchange=exchange) as (up, state):
        response = await relay(request, up, hide_usage=False, exchange=exchange)
    observe(request, model_id, state.name, exchange)
    return response


def setup_rerank_routes(app: web.Application) -> None:
    """Attach the rerank and score routes to ``app``."""
    app.router.add_post("/v1/rerank", rerank_v1)
    app.router.add_post("/rerank", rerank_v1)
    app.router.add_post("/v2/rerank", rerank_v2)
    app.router.add_post("/v1/score", score)
