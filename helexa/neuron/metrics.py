"""The neuron's metrics: model lifecycle, engines and GPUs (``helexa_neuron_*``), on its app's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from helexa.server.hotmetrics import HotCounter, HotGauge

__all__ = ["NeuronMetrics"]

MIB = 1024 * 1024


class NeuronMetrics:
    """Model lifecycle, engines and GPUs of one neuron (labels: model, harness, device)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.load_seconds = Histogram(
            "helexa_neuron_model_load_seconds",
            "Time from a load request to the engine answering, for successful loads.",
            ("model", "harness"),
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
            registry=registry,
        )
        self.loads = Counter(
            "helexa_neuron_model_loads",
            "Load attempts by result: loaded, failed (engine) or refused (preflight).",
            ("model", "result"),
            registry=registry,
        )
        self.engine_crashes = Counter(
            "helexa_neuron_engine_crashes",
            "Engines that exited on their own while serving.",
            ("model",),
            registry=registry,
        )
        self.in_flight = HotGauge(
            "helexa_neuron_requests_in_flight",
            "Inference requests being served, by model.",
            ("model",),
            registry=registry,
        )
        self.requests = HotCounter(
            "helexa_neuron_requests",
            "Inference requests passed to engines, by model, endpoint and status.",
            ("model", "endpoint", "status"),
            registry=registry,
        )
        device = ("device",)
        self.memory_used = Gauge("helexa_neuron_gpu_memory_used_bytes", "GPU memory in use.", device, registry=registry)
        self.memory_total = Gauge("helexa_neuron_gpu_memory_total_bytes", "GPU memory.", device, registry=registry)
        self.utilization = Gauge(
            "helexa_neuron_gpu_utilization_ratio", "GPU busy time over the last sample, 0-1.", device, registry=registry
        )
        self.temperature = Gauge(
            "helexa_neuron_gpu_temperature_celsius", "GPU core temperature.", device, registry=registry
        )

    def gpu_total(self, index: int, total_mib: int) -> None:
        """Record a device's memory size (NVML reports MiB; exported in bytes)."""
        self.memory_total.labels(str(index)).set(total_mib * MIB)

    def gpu_reading(self, index: int, used_mib: int, utilization_pct: int, temperature_c: int) -> None:
        """Record one NVML reading in base units: bytes, a 0-1 ratio, degrees Celsius."""
        device = str(index)
        self.memory_used.labels(device).set(used_mib * MIB)
        self.utilization.labels(device).set(utilization_pct / 100)
        self.temperature.labels(device).set(temperature_c)
