"""The HTTP metrics every role's app has, on the app's own registry (never the global one).

Names follow ``helexa_<role>_<what>_<unit>``; labels stay low-cardinality: the route *pattern*, never the
path, no request ids, no prompts. Each role's own metrics live with the role (``helexa.gateway.metrics``,
``helexa.neuron.metrics``). What every request updates uses the lock-free families of
:mod:`helexa.server.hotmetrics`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Info

from helexa.server.hotmetrics import CounterChild, HistogramChild, HotCounter, HotHistogram
from helexa.server.version import VersionInfo

__all__ = ["LATENCY_BUCKETS", "HttpMetrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


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
            buckets=LATENCY_BUCKETS,
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
