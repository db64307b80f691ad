"""The gateway's metrics: requests, latency, time to first token, tokens, cold starts, evictions, swaps, idle
unloads, the scheduler's queue and fleet health (``helexa_gateway_*``, labels model and neuron), on its app's
registry. What every request updates uses the lock-free families of :mod:`helexa.server.hotmetrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from helexa.gateway.registry import Registry
from helexa.server.hotmetrics import CounterChild, GaugeChild, HistogramChild, HotCounter, HotGauge, HotHistogram
from helexa.server.httpmetrics import LATENCY_BUCKETS

__all__ = ["BatchMetrics", "GangMembers", "GatewayMetrics", "RequestSeries"]

_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
_TPS_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000)


class BatchMetrics:
    """The Batch API's: lines run (by model and result), batches ended (by status), lines running and waiting."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.lines = Counter(
            "helexa_gateway_batch_lines",
            "Batch requests ended: completed (a 2xx answer), failed (another answer), retried (a 429/5xx tried "
            "again), expired (never run before the completion window ended).",
            ("model", "result"),
            registry=registry,
        )
        self.batches = Counter(
            "helexa_gateway_batches", "Batches ended, by final status.", ("status",), registry=registry
        )
        self.running = Gauge(
            "helexa_gateway_batch_lines_running", "Batch requests being run by this gateway.", registry=registry
        )
        self.pending = Gauge(
            "helexa_gateway_batch_lines_pending",
            "Batch requests not run yet in batches in progress, as of the runner's last look.",
            registry=registry,
        )


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
            buckets=LATENCY_BUCKETS,
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
        self.swaps = Counter(
            "helexa_gateway_swaps",
            "Loads that unloaded another model first (a swap).",
            labels,
            registry=registry,
        )
        self.idle_unloads = Counter(
            "helexa_gateway_idle_unloads",
            "Models unloaded (or put to sleep) because nobody used them for their idle_unload_seconds.",
            labels,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "helexa_gateway_queue_wait_seconds",
            "Time requests waited in the scheduler's queue (for a load, a swap or a drain), by key priority.",
            ("model", "priority"),
            buckets=_TTFT_BUCKETS,
            registry=registry,
        )
        self.load_queue = Gauge(
            "helexa_gateway_load_queue_requests",
            "Requests waiting in the scheduler's queue for a model, by key priority.",
            ("model", "priority"),
            registry=registry,
        )
        self.load_queue_limit = Gauge(
            "helexa_gateway_load_queue_limit",
            "Most requests of one key that may wait for one model.",
            registry=registry,
        )
        self._series: dict[tuple[str, str], RequestSeries] = {}
        self.neuron_up = Gauge(
            "helexa_gateway_neuron_up", "1 when the neuron answers its polls.", ("neuron",), registry=registry
        )
        self.gang_failures = Counter(
            "helexa_gateway_gang_failures",
            "Gangs (models over several neurons) stopped because a member failed; neuron = the member that failed.",
            ("model", "neuron"),
            registry=registry,
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


class GangMembers(Collector):
    """``helexa_gateway_gang_member_memory_mb{model, gang, neuron, rank, status}``: every member of every gang the
    neurons report, with the memory its rank holds (the catalogue's ``vram_mb`` over its hosts), read from the
    registry at each scrape — a gang shows as one model with its members."""

    def __init__(self, fleet: Registry) -> None:
        self.fleet = fleet

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One sample per member."""
        family = GaugeMetricFamily(
            "helexa_gateway_gang_member_memory_mb",
            "Members of gangs (one model over several neurons): the memory each rank holds, in MiB.",
            labels=("model", "gang", "neuron", "rank", "status"),
        )
        for entry in self.fleet.entries:
            if entry.hosts < 2:
                continue
            share = -(-entry.vram_mb // entry.hosts)
            for gang in self.fleet.gangs(entry.id):
                for member in gang.members:
                    labels = (entry.id, gang.gang, member.neuron.name, str(member.rank.rank), str(member.info.status))
                    family.add_metric(labels, share)
        yield family


class ClusterGauges(Collector):
    """``helexa_gateway_cluster_store_up``, ``…_leader`` (1 on the gateway that places loads) and ``…_gateways``
    (how many this one sees alive), read at each scrape from ``report()`` (see
    :meth:`helexa.gateway.peers.Peers.report`)."""

    def __init__(self, report: Callable[[], dict[str, Any]]) -> None:
        self.report = report

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Three gauges."""
        report = self.report()
        for name, text, value in (
            ("store_up", "Whether the cluster store answers (1) or not (0).", report["store_up"]),
            ("leader", "Whether this gateway leads the cluster (places loads and evictions).", report["leading"]),
            ("gateways", "Gateways of the cluster alive, as this one last saw them.", len(report["gateways"])),
        ):
            yield GaugeMetricFamily(f"helexa_gateway_cluster_{name}", text, value=float(value))
