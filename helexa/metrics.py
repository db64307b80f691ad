"""Prometheus metrics shared by every role, created on an app-owned registry (never the global one).

Names follow ``helexa_<role>_<what>_<unit>``; labels stay low-cardinality: the route *pattern*, never the
path, no request ids, no prompts. Role-specific metrics live with their role.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, Info

from helexa.server.version import VersionInfo

__all__ = ["HttpMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class HttpMetrics:
    """Request counts and durations by route pattern, method and status, plus build info."""

    def __init__(self, registry: CollectorRegistry, role: str, version: VersionInfo) -> None:
        prefix = f"helexa_{role}"
        self.requests = Counter(
            f"{prefix}_http_requests",
            "HTTP requests answered, by route pattern, method and status.",
            ("route", "method", "status"),
            registry=registry,
        )
        self.duration = Histogram(
            f"{prefix}_http_request_duration_seconds",
            "Time from request to the end of the response, by route pattern.",
            ("route",),
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        build = Info(f"{prefix}_build", "Version of this helexa process.", registry=registry)
        build.info({"version": version.version, "git_sha": version.git_sha or "unknown", "python": version.python})

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Record one finished request."""
        self.requests.labels(route, method, str(status)).inc()
        self.duration.labels(route).observe(seconds)
