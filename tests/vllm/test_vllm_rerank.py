"""Rerank and score on vLLM's CPU build: an embedding model from PyPI (all-MiniLM-L6-v2) started for
``task = "rerank"`` (vLLM's pooling runner: it scores a query against each document by cosine), placed and
cold-loaded by the gateway, asked through it by the official Cohere client — the right document first — and
vLLM's own ``/v1/score`` relayed. Marker ``vllm``."""

from __future__ import annotations

import asyncio

import aiohttp
import cohere
import pytest

from helexa.engine.plugins import get_harnesses, get_plugin_manager
from helexa.gateway.app import make_gateway_app
from helexa.neuron.app import make_neuron_app
from tests.conftest import engine_ports, make_config

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]
DOCS = ["Bananas are yellow.", "Paris is the capital of France.", "Dogs bark at night.", "The sea is salty."]


async def test_vllm_reranks_through_the_gateway(aiohttp_server, minilm, version):
    options = {"dtype": "float32", "max_model_len": 256, "cpu_kv_cache_gib": 1}
    model = {"id": "mini", "harness": "vllm", "source": minilm.name, "task": "rerank"}
    neuron_cfg = make_config(
        neuron={
            "model_dirs": [str(minilm.parent)],
            "port_range": engine_ports(),
            "ready_timeout_seconds": 600,
            "stop_timeout_seconds": 20,
            "demo": False,
            "token": "n",
        },
        models=[{**model, "options": options}],
    )
    neuron = await aiohttp_server(make_neuron_app(neuron_cfg, version, get_harnesses(get_plugin_manager())))
    gateway_cfg = make_config(
        neurons=[{"name": "cpu", "endpoint": str(neuron.make_url("")).rstrip("/"), "token": "n"}],
        models=[{**model, "vram_mb": 400}],
        gateway={"poll_interval_seconds": 0.2, "load_timeout_seconds": 700},
    )
    gateway = await aiohttp_server(make_gateway_app(gateway_cfg, version))
    base = str(gateway.make_url("")).rstrip("/")

    def call():
        v2 = cohere.ClientV2(api_key="unused", base_url=base, max_retries=0, timeout=700)
        return v2.rerank(model="mini", query="What is the capital of France?", documents=DOCS, top_n=2)

    ranked = await asyncio.to_thread(call)  # the first request cold-loads the model on vLLM
    assert ranked.results[0].index == 1 and len(ranked.results) == 2, ranked  # Paris, by cosine
    assert ranked.results[0].relevance_score > ranked.results[1].relevance_score

    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{base}/v1/score", json={"model": "mini", "text_1": "the capital of France", "text_2": DOCS[:2]}
        ) as resp:
            body = await resp.json()
        assert resp.status == 200, body
        scores = {d["index"]: d["score"] for d in body["data"]}
        assert scores[1] > scores[0]
        async with session.post(
            f"{base}/rerank", json={"model": "mini", "query": "salt water", "documents": DOCS}
        ) as resp:
            body = await resp.json()
        assert resp.status == 200 and body["results"][0]["document"]["text"] == "The sea is salty.", body
