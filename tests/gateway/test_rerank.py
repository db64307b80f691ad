"""Rerank and score through the gateway (fake neurons whose engine scores by shared words, so the order is known):
the three rerank shapes, the official Cohere clients (v1 and v2), placement and cold loads, what a model that
cannot rerank gets, bad input, a hostile engine's answer."""

from __future__ import annotations

import asyncio

import cohere
import pytest
from prometheus_client import generate_latest

from helexa.server.app import registry_key
from tests.fakes.fake_neuron import FakeNeuron
from tests.gateway.conftest import entry
from tests.gateway.test_gateway import metric

DOCS = ["bananas are yellow", "the capital of France is Paris", "Paris is a city", "dogs bark"]
QUERY = "what is the capital of France"
RANKER = entry("ranker", 600, task="rerank")


async def ranker_fleet(fleet, **sections):
    a = FakeNeuron("a")
    a.preload("ranker")
    a.preload("chat")
    return await fleet([a], models=[RANKER, entry("chat", 600)], **sections)


@pytest.mark.parametrize(("path", "documents"), [("/v1/rerank", True), ("/rerank", True), ("/v2/rerank", False)])
async def test_the_rerank_shapes(fleet, path, documents):
    client, fakes = await ranker_fleet(fleet)
    resp = await client.post(path, json={"model": "ranker", "query": QUERY, "documents": DOCS, "top_n": 2})
    body = await resp.json()
    assert resp.status == 200, body
    assert [r["index"] for r in body["results"]] == [1, 2]  # most shared words first, cut to top_n
    assert body["results"][0]["relevance_score"] > body["results"][1]["relevance_score"]
    assert ("document" in body["results"][0]) is documents
    if documents:
        assert body["results"][0]["document"] == {"text": DOCS[1]}
    assert body["model"] == "ranker" and body["usage"]["prompt_tokens"] == 11 and body["id"].startswith("rerank-")
    assert body["meta"]["api_version"]["version"] == ("2" if path == "/v2/rerank" else "1")
    # the engine was asked with plain texts, every document (top_n is applied here)
    assert fakes["a"].rerank_bodies[-1] == {"model": "ranker", "query": QUERY, "documents": DOCS, "top_n": 4}


async def test_documents_as_objects_and_return_documents(fleet):
    client, fakes = await ranker_fleet(fleet)
    docs = [{"text": d} for d in DOCS]
    resp = await client.post(
        "/v1/rerank", json={"model": "ranker", "query": QUERY, "documents": docs, "return_documents": False}
    )
    body = await resp.json()
    assert resp.status == 200 and len(body["results"]) == 4 and "document" not in body["results"][0]
    assert fakes["a"].rerank_bodies[-1]["documents"] == DOCS


async def test_the_official_cohere_clients(fleet):
    client, _ = await ranker_fleet(fleet, auth={"api_keys": ["sk-c"]})
    base = str(client.make_url("")).rstrip("/")

    def call():
        v2 = cohere.ClientV2(api_key="sk-c", base_url=base, max_retries=0)
        second = v2.rerank(model="ranker", query=QUERY, documents=DOCS, top_n=3)
        v1 = cohere.Client(api_key="sk-c", base_url=base, max_retries=0)
        first = v1.rerank(model="ranker", query=QUERY, documents=[DOCS[0], {"text": DOCS[1]}], return_documents=True)
        return second, first

    second, first = await asyncio.to_thread(call)
    assert [r.index for r in second.results] == [1, 2, 0]
    assert [r.index for r in first.results] == [1, 0] and first.results[0].document.text == DOCS[1]


async def test_a_rerank_model_is_placed_and_cold_loaded_like_any(fleet):
    a = FakeNeuron("a")
    client, _ = await fleet([a], models=[RANKER])
    resp = await client.post("/v2/rerank", json={"model": "ranker", "query": QUERY, "documents": DOCS})
    assert resp.status == 200, await resp.text()
    assert a.loads == ["ranker"]
    exported = generate_latest(client.app[registry_key]).decode()
    assert metric(exported, "helexa_gateway_requests_total", model="ranker", neuron="a", status="200") == 1
    assert metric(exported, "helexa_gateway_cold_starts_total", model="ranker", neuron="a") == 1


async def test_keys_guard_every_rerank_route(fleet):
    client, _ = await ranker_fleet(fleet, auth={"api_keys": ["sk-c"]})
    for path in ("/v1/rerank", "/rerank", "/v2/rerank", "/v1/score"):
        resp = await client.post(path, json={"model": "ranker", "query": QUERY, "documents": DOCS})
        assert resp.status == 401, path


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"model": "chat", "query": QUERY, "documents": DOCS}, 400, "started for 'chat', not to rerank"),
        ({"model": "ranker", "query": QUERY, "documents": []}, 400, "documents: give at least one"),
        ({"model": "ranker", "query": QUERY, "documents": [1, 2]}, 400, "documents[0]"),
        ({"model": "ranker", "query": QUERY, "documents": [{"title": "x"}]}, 400, "documents[0]"),
        ({"model": "ranker", "documents": DOCS}, 400, "query"),
        ({"model": "ranker", "query": QUERY, "documents": DOCS, "top_n": 0}, 400, "top_n"),
        ({"query": QUERY, "documents": DOCS}, 400, "model"),
        ({"model": "nope", "query": QUERY, "documents": DOCS}, 404, "not found"),
    ],
    ids=["a chat model", "no documents", "numbers", "no text", "no query", "top_n 0", "no model", "unknown model"],
)
async def test_bad_rerank_requests(fleet, body, status, says):
    client, fakes = await ranker_fleet(fleet)
    for path in ("/v1/rerank", "/v2/rerank"):
        resp = await client.post(path, json=body)
        error = (await resp.json())["error"]
        assert resp.status == status and says in error["message"], (path, error)
    assert fakes["a"].rerank_bodies == []


@pytest.mark.parametrize(
    "answer",
    [{"results": [{"index": 99, "relevance_score": 1.0}]}, {"results": "nope"}, {"unexpected": True}],
    ids=["an index never asked about", "results not a list", "no results"],
)
async def test_a_hostile_engine_answer_is_a_clean_502(fleet, answer):
    client, fakes = await ranker_fleet(fleet)
    fakes["a"].rerank_answer = answer
    resp = await client.post("/v1/rerank", json={"model": "ranker", "query": QUERY, "documents": DOCS})
    error = (await resp.json())["error"]
    assert resp.status == 502 and error["code"] == "upstream_error", error


async def test_score_is_relayed_for_vllm_and_refused_for_llama_cpp(fleet):
    a = FakeNeuron("a")
    a.preload("ranker")
    a.preload("cpp-ranker")
    cpp = entry("cpp-ranker", 600, task="rerank", harness="llamacpp")
    client, _ = await fleet([a], models=[RANKER, cpp])
    resp = await client.post("/v1/score", json={"model": "ranker", "text_1": QUERY, "text_2": DOCS})
    assert resp.status == 200 and (await resp.json())["data"][0]["score"] == 0.5
    resp = await client.post("/v1/score", json={"model": "cpp-ranker", "text_1": QUERY, "text_2": DOCS})
    error = (await resp.json())["error"]
    assert resp.status == 400 and error["code"] == "score_unsupported" and "/v1/rerank" in error["message"]
