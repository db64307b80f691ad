"""Neuron fixtures: an in-process neuron app over the real process machinery with the fake engine."""

from __future__ import annotations

import pytest

from helexa.neuron.app import make_neuron_app
from tests.conftest import engine_ports, make_config
from tests.fakes.fake_harness import FakeHarness


@pytest.fixture
def models_dir(tmp_path):
    d = tmp_path / "models"
    d.mkdir()
    (d / "fake-Q4_K_M.gguf").write_bytes(b"GGUF" + b"\0" * 1024)
    return d


@pytest.fixture
def neuron(aiohttp_client, models_dir, version):
    """``await neuron(neuron={...}, models=[...])`` -> a test client on a fresh neuron app."""

    async def make(*, neuron: dict | None = None, models: list | None = None, harnesses=None):
        section = {
            "model_dirs": [str(models_dir)],
            "port_range": engine_ports(),
            "ready_timeout_seconds": 20,
            "stop_timeout_seconds": 2,
            **(neuron or {}),
        }
        cfg = make_config(neuron=section, models=models or [])
        app = make_neuron_app(cfg, version, harnesses or {"fake": FakeHarness})
        return await aiohttp_client(app)

    return make


def fake_model(model_id: str = "fake-model", *flags: str, **extra) -> dict:
    return {"id": model_id, "harness": "fake", "source": "fake-Q4_K_M.gguf", "options": {"flags": list(flags)}, **extra}
