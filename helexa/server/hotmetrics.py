"""Metric families for the request hot path: plain attributes updated from the event loop, exported at scrape.

``prometheus_client`` takes a lock on every increment; a proxied request makes a dozen of them. These families
keep per-label-set children whose ``inc``/``observe`` are an attribute update, and register one collector on
the app's :class:`~prometheus_client.CollectorRegistry` that turns them into the usual samples when scraped
(counters as ``<name>_total``, histograms as ``_bucket``/``_count``/``_sum``).

Contract: update them from the event loop's thread only (every helexa handler runs there). A scrape from
another thread may read a value a moment old, never a torn one (CPython attribute reads are atomic).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

__all__ = ["HotCounter", "HotGauge", "HotHistogram"]


Child = TypeVar("Child")


class _Family(Generic[Child]):
    """A named metric with label names; children by label values, created on first use."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self._children: dict[tuple[str, ...], Child] = {}
        registry.register(self)

    def labels(self, *values: str) -> Child:
        """The child for ``values`` (in label-name order), created on first use."""
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._new_child()
        return child

    def children(self) -> list[tuple[tuple[str, ...], Child]]:
        """``(label values, child)`` of every series so far (a snapshot: safe while requests add series)."""
        return list(self._children.items())

    def describe(self) -> list[Metric]:
        """Names only (the registry checks for clashes without collecting)."""
        return [self._family()]

    def _new_child(self) -> Child:
        raise NotImplementedError

    def _family(self) -> Metric:
        raise NotImplementedError


class _ValueFamily(_Family[Child]):
    """A family whose children hold one ``value`` (counters, gauges)."""

    def _family(self) -> CounterMetricFamily | GaugeMetricFamily:
        raise NotImplementedError

    def collect(self) -> Iterator[Metric]:
        """The family's samples now."""
        family = self._family()
        for values, child in list(self._children.items()):
            family.add_metric(list(values), child.value)  # type: ignore[attr-defined]
        yield family


class CounterChild:
    """One counter series."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        """Add ``amount`` (not checked for sign: callers count things)."""
        self.value += amount


class HotCounter(_ValueFamily[CounterChild]):
    """A counter family exported as ``<name>_total``."""

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)


class GaugeChild:
    """One gauge series."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        """Add ``amount``."""
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        """Subtract ``amount``."""
        self.value -= amount

    def set(self, value: float) -> None:
        """Set to ``value``."""
        self.value = value


class HotGauge(_ValueFamily[GaugeChild]):
    """A gauge family."""

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)


class HistogramChild:
    """One histogram series: a count per bucket (not cumulative until exported) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Record one observation."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class HotHistogram(_Family[HistogramChild]):
    """A histogram family with fixed upper bounds (``le``, inclusive, as Prometheus defines them)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        *,
        buckets: Sequence[float],
    ) -> None:
        self.bounds = tuple(sorted(float(b) for b in buckets))
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        """The family's samples now, with cumulative buckets."""
        family = self._family()
        for values, child in list(self._children.items()):
            counts, running, buckets = list(child.counts), 0, []
            for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
                running += count
                buckets.append((floatToGoString(bound), running))
            family.add_metric(list(values), buckets, child.sum)
        yield family
