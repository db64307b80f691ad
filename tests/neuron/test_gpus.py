"""GPU discovery and health through NVML, with a stand-in pynvml module (no GPU here), and without NVML."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest

from helexa.neuron import gpus

MB = 1024 * 1024


@pytest.fixture
def fake_nvml(monkeypatch):
    nvml = types.ModuleType("pynvml")
    nvml.NVML_TEMPERATURE_GPU = 0
    nvml.nvmlInit = lambda: None
    nvml.nvmlSystemGetDriverVersion = lambda: "580.65"
    nvml.nvmlSystemGetCudaDriverVersion = lambda: 13000
    nvml.nvmlDeviceGetCount = lambda: 2
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlDeviceGetCudaComputeCapability = lambda h: (12, 0)
    nvml.nvmlDeviceGetName = lambda h: b"NVIDIA GeForce RTX 5090"
    nvml.nvmlDeviceGetUUID = lambda h: f"GPU-{h}"
    nvml.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(
        total=32607 * MB, used=(1000 + h) * MB, free=(31607 - h) * MB
    )
    nvml.nvmlDeviceGetUtilizationRates = lambda h: SimpleNamespace(gpu=40 + h)
    nvml.nvmlDeviceGetTemperature = lambda h, kind: 55

    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(gpus, "_initialised", None)
    return nvml


def test_discovery_reads_every_device(fake_nvml):
    found = gpus.discover(["llamacpp"], "1.0")
    assert found.driver_version == "580.65"
    assert found.cuda_version == "13.0"
    assert [(d.index, d.name, d.uuid, d.vram_total_mb, d.compute_capability) for d in found.devices] == [
        (0, "NVIDIA GeForce RTX 5090", "GPU-0", 32607, "12.0"),
        (1, "NVIDIA GeForce RTX 5090", "GPU-1", 32607, "12.0"),
    ]
    assert found.gpu_error == ""


def test_health_reads_memory_utilisation_and_temperature(fake_nvml):
    health = gpus.read_health(2)
    assert [(h.index, h.vram_used_mb, h.vram_free_mb, h.utilization_pct, h.temp_c) for h in health] == [
        (0, 1000, 31607, 40, 55),
        (1, 1001, 31606, 41, 55),
    ]


def test_a_device_that_fails_to_read_reports_zeros(fake_nvml):
    def broken(h):
        raise RuntimeError("GPU fell off the bus")

    fake_nvml.nvmlDeviceGetUtilizationRates = broken
    assert [(h.index, h.vram_used_mb) for h in gpus.read_health(1)] == [(0, 0)]


def test_without_nvml_the_neuron_is_cpu_only(monkeypatch):
    nvml = types.ModuleType("pynvml")

    def missing():
        raise OSError("NVML Shared Library Not Found")

    nvml.nvmlInit = missing
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(gpus, "_initialised", None)
    found = gpus.discover([], "1.0")
    assert found.devices == []
    assert "NVML Shared Library Not Found" in found.gpu_error
    assert found.host.cpu_count >= 1
    assert gpus.read_health(0) == []
