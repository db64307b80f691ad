"""Prometheus metrics shared by every role, created on an app-owned registry (never the global one).

Names follow ``helexa_<role>_<what>_<unit>``; labels stay low-cardinality: the route *pattern*, never the
path, no request ids, no prompts. Role-specific metrics live with their role. What every request updates
uses the lock-free families of :mod:`helexa.hotmetrics`; the rest uses ``prometheus_client`` directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from helexa.hotmetrics import CounterChild, GaugeChild, HistogramChild, HotCounter, HotGauge, HotHistogram
from helexa.server.version import VersionInfo

__all__ = ["GatewayMetrics", "HttpMetrics", "NeuronMetrics"]

MIB = 1024 * 1024
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class HttpMetrics:
    """Request counts and durations by route pattern, method and status, plus build info."""

    def __init__(self, registry: CollectorRegistry, role: str, version: VersionInfo) -> None:
        self.registry = registry
        self._children: dict[tuple[str, str, int], tuple[CounterChild, HistogramChild]] = {}
        prefix = f"helexa_{role}"
        self.errors = HotCounter(
            f"{prefix}_errors",
            "Error answers (status >= 400), by route pattern, class (4xx or 5xx) and error code.",
            ("route", "class", "code"),
            registry,
        )
        self.requests = HotCounter(
            f"{prefix}_http_requests",
            "HTTP requests answered, by route pattern, method and status.",
            ("route", "method", "status"),
            registry=registry,
        )
        self.duration = HotHistogram(
            f"{prefix}_http_request_duration_seconds",
            "Time from request to the end of the response, by route pattern.",
            ("route",),
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        build = Info(f"{prefix}_build", "Version of this helexa process.", registry=registry)
        build.info({"version": version.version, "git_sha": version.git_sha or "unknown", "python": version.python})

    def observe(self, route: str, method: str, status: int, seconds: float, code: str = "") -> None:
        """Record one finished request, and its error ``code`` when it failed (label children are cached: this
        runs on every request). An error relayed from upstream without a code of ours counts as ``http_<status>``."""
        if status >= 400:
            self.errors.labels(route, f"{status // 100}xx", code or f"http_{status}").inc()
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(route, method, str(status)),
                self.duration.labels(route),
            )
        children[0].inc()
        children[1].observe(seconds)


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


_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
_TPS_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000)


class GatewayMetrics:
    """Requests, latency, tokens, cold starts, evictions and fleet health (labels: model, neuron)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("model", "neuron")
        self.requests = HotCounter(
            "helexa_gateway_requests", "Inference requests, by status.", (*labels, "status"), registry=registry
        )
        self.errors = HotCounter(
            "helexa_gateway_upstream_errors",
            "Inference requests a neuron failed (unreachable, broke off, engine error), by error code.",
            (*labels, "code"),
            registry=registry,
        )
        self.duration = HotHistogram(
            "helexa_gateway_request_duration_seconds",
            "Time from request to the last byte of the response.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = HotHistogram(
            "helexa_gateway_time_to_first_token_seconds",
            "Time from request to the first generated token (streams).",
            labels,
            buckets=_TTFT_BUCKETS,
            registry=registry,
        )
        self.tokens_per_second = HotHistogram(
            "helexa_gateway_output_tokens_per_second",
            "Completion tokens per second after the first token (streams).",
            labels,
            buckets=_TPS_BUCKETS,
            registry=registry,
        )
        self.prompt_tokens = HotCounter("helexa_gateway_prompt_tokens", "Prompt tokens.", labels, registry=registry)
        self.completion_tokens = HotCounter(
            "helexa_gateway_completion_tokens", "Completion tokens.", labels, registry=registry
        )
        self.in_flight = HotGauge(
            "helexa_gateway_requests_in_flight", "Requests being served.", labels, registry=registry
        )
        self.cold_starts = Counter(
            "helexa_gateway_cold_starts", "Models loaded because a request needed them.", labels, registry=registry
        )
        self.load_seconds = Histogram(
            "helexa_gateway_model_load_seconds",
            "Time a cold load took (eviction included).",
            labels,
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 900),
            registry=registry,
        )
        self.evictions = Counter(
            "helexa_gateway_evictions", "Models unloaded to make room for another.", labels, registry=registry
        )
        self.queue_wait = Histogram(
            "helexa_gateway_queue_wait_seconds",
            "Time requests waited for a cold load.",
            ("model",),
            buckets=_TTFT_BUCKETS,
            registry=registry,
        )
        self.load_queue = Gauge(
            "helexa_gateway_load_queue_requests",
            "Requests waiting for a model's cold load.",
            ("model",),
            registry=registry,
        )
        self.load_queue_limit = Gauge(
            "helexa_gateway_load_queue_limit", "Most requests that may wait for one model's load.", registry=registry
        )
        self._series: dict[tuple[str, str], RequestSeries] = {}
        self.neuron_up = Gauge(
            "helexa_gateway_neuron_up", "1 when the neuron answers its polls.", ("neuron",), registry=registry
        )

    def series(self, model: str, neuron: str) -> RequestSeries:
        """The per-request metric children for ``(model, neuron)``, created once (label lookups cost)."""
        key = (model, neuron)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = RequestSeries(
                duration=self.duration.labels(model, neuron),
                ttft=self.ttft.labels(model, neuron),
                tokens_per_second=self.tokens_per_second.labels(model, neuron),
                prompt_tokens=self.prompt_tokens.labels(model, neuron),
                completion_tokens=self.completion_tokens.labels(model, neuron),
                in_flight=self.in_flight.labels(model, neuron),
                requests={},
                parent=self,
                key=key,
            )
        return series


@dataclass(slots=True)
class RequestSeries:
    """Metric children of one (model, neuron) pair."""

    duration: HistogramChild
    ttft: HistogramChild
    tokens_per_second: HistogramChild
    prompt_tokens: CounterChild
    completion_tokens: CounterChild
    in_flight: GaugeChild
    requests: dict[int, CounterChild]
    parent: GatewayMetrics
    key: tuple[str, str]

    def request(self, status: int) -> None:
        """Count one request answered with ``status``."""
        child = self.requests.get(status)
        if child is None:
            child = self.requests[status] = self.parent.requests.labels(*self.key, str(status))
        child.inc()
