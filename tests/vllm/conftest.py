"""vLLM suite fixtures: the tiny random-weight Llama, built offline once per run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A directory holding the tiny Llama (config, tokenizer, safetensors): see tiny_llama.py."""
    out = tmp_path_factory.mktemp("models") / "tinyllama"
    subprocess.run([sys.executable, str(HERE / "tiny_llama.py"), str(out)], check=True, timeout=300)
    return out
