"""The hot-path metric families export exactly what prometheus_client's own types do (minus ``_created``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from helexa.server.hotmetrics import HotCounter, HotGauge, HotHistogram

BUCKETS = (0.01, 0.1, 1, 10)


def _samples(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return sorted(line for line in text.splitlines() if line and "_created" not in line)


def test_same_exposition_as_prometheus_client():
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    hot_c = HotCounter("t_requests", "Requests.", ("model", "status"), ours)
    ref_c = Counter("t_requests", "Requests.", ("model", "status"), registry=theirs)
    hot_g = HotGauge("t_in_flight", "In flight.", ("model",), ours)
    ref_g = Gauge("t_in_flight", "In flight.", ("model",), registry=theirs)
    hot_h = HotHistogram("t_seconds", "Latency.", ("model",), ours, buckets=BUCKETS)
    ref_h = Histogram("t_seconds", "Latency.", ("model",), buckets=BUCKETS, registry=theirs)
    for model, status, value in [("a", "200", 0.01), ("a", "200", 0.5), ("b", "500", 12.0), ("a", "429", 1)]:
        for c in (hot_c, ref_c):
            c.labels(model, status).inc()
        for h in (hot_h, ref_h):
            h.labels(model).observe(value)
        for g in (hot_g, ref_g):
            g.labels(model).inc(3)
            g.labels(model).dec()
    for g in (hot_g, ref_g):
        g.labels("c").set(7)
    hot_c.labels("a", "200").inc(2.5)
    ref_c.labels("a", "200").inc(2.5)
    assert _samples(ours) == _samples(theirs)
    assert 't_seconds_bucket{le="0.01",model="a"} 1.0' in _samples(ours)  # le is inclusive


def test_names_clash_like_prometheus_client():
    registry = CollectorRegistry()
    HotCounter("t_total_clash", "x", (), registry)
    try:
        Counter("t_total_clash", "y", registry=registry)
    except ValueError:
        return
    raise AssertionError("a duplicate name was accepted")
