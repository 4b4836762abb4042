"""Counters and histograms for one process, kept as plain numbers and exported at scrape.

prometheus_client's metrics take a lock on every change. The gateway changes its
metrics from one event-loop thread only, so one process keeps them as plain floats and
lists and turns them into metric families when scraped. Under ``--workers N`` the real
multi-process metrics are used instead: they must be shared through files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry


class _CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class LocalCounter(Collector):
    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self._children: dict[tuple[str, ...], _CounterChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> _CounterChild:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = _CounterChild()
        return child

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self._children.items():
            family.add_metric(list(values), child.value)
        yield family


class HistogramChild:
    __slots__ = ("counts", "sum")

    def __init__(self, bounds: list[float]) -> None:
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0

    def add(self, counts: Mapping[int, int], total: float, bucket_at: Sequence[int]) -> None:
        """Add observations counted elsewhere: ``counts[i]`` fell in ``bucket_at[i]``."""
        mine = self.counts
        for at, count in counts.items():
            mine[bucket_at[at]] += count
        self.sum += total


class LocalHistogram(Collector):
    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        buckets: Sequence[float],
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.bounds = [float(b) for b in buckets]
        self._children: dict[tuple[str, ...], HistogramChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> HistogramChild:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = HistogramChild(self.bounds)
        return child

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self._children.items():
            cumulative = 0
            buckets = []
            for bound, count in zip([*self.bounds, float("inf")], child.counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            family.add_metric(list(values), buckets, child.sum)
        yield family
