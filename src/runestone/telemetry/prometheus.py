"""Prometheus metrics, read from the tallies and the telemetry hook; ``GET /metrics``.

Requests are taken from the ``Tallies`` a kind at a time (when scraped, and when a slot
of the tallies ends), not one event per request; alias reloads and store failures come
through the hook.

Under ``runestone serve --workers N`` every worker writes to ``PROMETHEUS_MULTIPROC_DIR``
(the CLI creates one) and a scrape of any worker sums them all.

Labels stay bounded: no request ids, no raw user strings; a model label past the first
``MAX_MODELS`` distinct ones is reported as ``other``.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from runestone.telemetry._collectors import BreakerCollector, BudgetCollector
from runestone.telemetry._local_metrics import HistogramChild, LocalCounter, LocalHistogram
from runestone.telemetry.events import AliasReload, CacheLookup, Event, GuardDecision, StoreFailed
from runestone.telemetry.tallies import (
    BOUNDS,
    LATENCY_BUCKETS,
    OVERHEAD_BUCKETS,
    Counts,
    Kind,
    Tallies,
)
from runestone.telemetry.tallies import Histogram as Buckets

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_MODELS = 200


class PrometheusMetrics:
    EVENTS = (AliasReload, StoreFailed, CacheLookup, GuardDecision)

    def __init__(
        self,
        tallies: Tallies,
        breakers: Callable[[], Iterable[dict[str, object]]] | None = None,
        budgets: Callable[[], Iterable[tuple[str, str, float]]] | None = None,
    ) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.tallies = tallies
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        counter, histogram = self._kinds()
        self.requests = counter(
            "runestone_requests",
            "Requests by route, alias, target, status and error code",
            ["route", "alias", "provider", "model", "status", "code"],
            registry=r,
        )
        self.duration = histogram(
            "runestone_request_duration_seconds",
            "Whole request, received to last byte",
            ["route", "alias", "provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = histogram(
            "runestone_gateway_overhead_seconds",
            "Time not spent waiting on the upstream",
            ["route"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.ttft = histogram(
            "runestone_time_to_first_token_seconds",
            "Streams: request to first content",
            ["route", "alias", "provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = counter(
            "runestone_tokens",
            "Tokens as the provider reported them",
            ["provider", "model", "direction"],
            registry=r,
        )
        self.cost = counter(
            "runestone_cost_usd",
            "Spend in USD, from reported tokens and the price table",
            ["provider", "model"],
            registry=r,
        )
        self.streams = counter(
            "runestone_stream_outcomes",
            "How streams ended",
            ["route", "outcome"],
            registry=r,
        )
        self.extra_attempts = counter(
            "runestone_extra_attempts",
            "Attempts beyond the first (retries and fallbacks)",
            ["route", "alias"],
            registry=r,
        )
        # Per client key: ids come from the alias file, so the label is bounded.
        self.key_requests = counter(
            "runestone_key_requests",
            "Requests per client key, by status and error code",
            ["key", "status", "code"],
            registry=r,
        )
        self.key_cost = counter(
            "runestone_key_cost_usd", "Spend in USD per client key", ["key"], registry=r
        )
        self.store_errors = counter(
            "runestone_limits_store_errors",
            "Calls to the store of limits and budgets that failed",
            ["store"],
            registry=r,
        )
        self.cache_lookups = counter(
            "runestone_cache_lookups",
            "Requests the response cache applied to, by route and result: hit, miss, bypass",
            ["route", "result"],
            registry=r,
        )
        self.cache_saved = counter(
            "runestone_cache_saved_usd",
            "What the answers served from the cache had cost",
            [],
            registry=r,
        )
        self.guard_decisions = counter(
            "runestone_guard_decisions",
            "Guards' decisions by route, guard, stage (input, output) and decision: pass, "
            "block, redact, log, error",
            ["route", "guard", "stage", "decision"],
            registry=r,
        )
        self.in_flight = _InFlight(r, tallies, self.multiprocess)
        self.reloads = Counter(
            "runestone_alias_reloads", "Alias file reloads", ["result"], registry=r
        )
        self.table = Gauge(
            "runestone_alias_table_info",
            "The alias table in use (value 1)",
            ["version"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self._models: set[str] = set()
        # labels() costs microseconds (a lock, tuple checks); a child per label set is
        # looked up once and kept.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # What a kind of request (its labels) updates: one lookup, not one per metric.
        self._series: dict[Kind, _Series] = {}
        self._version: str | None = None
        if breakers is not None and not self.multiprocess:
            r.register(BreakerCollector(breakers))
        if budgets is not None and not self.multiprocess:
            r.register(BudgetCollector(budgets))
        # Processes share the metrics through files: each request must reach them before
        # another worker's scrape, so the tallies hand on every change at once.
        tallies.eager = tallies.eager or self.multiprocess
        tallies.readers.append(self._take)

    def __call__(self, event: Event) -> None:
        if isinstance(event, CacheLookup):
            self.child(self.cache_lookups, event.route, event.result).inc()
            if event.saved:
                self.child(self.cache_saved, event.route).inc(event.saved)
        elif isinstance(event, GuardDecision):
            self.child(
                self.guard_decisions, event.route, event.guard, event.stage, event.decision
            ).inc()
        elif isinstance(event, StoreFailed):
            self.child(self.store_errors, event.store).inc()
        elif isinstance(event, AliasReload):
            if not event.initial:  # a start-up load is not a reload
                self.reloads.labels("ok" if event.ok else "failed").inc()
            if event.ok and event.version != self._version:
                if self._version is not None:
                    if self.multiprocess:  # its gauges cannot drop a label: 0 instead
                        self.table.labels(self._version).set(0)
                    else:
                        self.table.remove(self._version)
                self._version = event.version
                self.table.labels(event.version).set(1)

    def _kinds(self) -> tuple[Any, Any]:
        """Counter and histogram classes: plain numbers in one process, files in several."""
        if self.multiprocess:
            return Counter, Histogram
        return LocalCounter, _local_histogram

    def child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def _model(self, model: str) -> str:
        if model in self._models:
            return model
        if len(self._models) < MAX_MODELS:
            self._models.add(model)
            return model
        return "other"

    def _take(self, slot: int, batch: dict[Kind, Counts]) -> None:
        for kind, counts in batch.items():
            # Keyed by its labels, the model bounded: a client's model names are not.
            labels = (*kind[:3], self._model(kind[3]), *kind[4:])
            series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = self._new_series(labels)
            series.add(counts, self)
        if self.multiprocess:
            self.in_flight.publish()

    def _new_series(self, kind: Kind) -> _Series:
        route, alias, provider, model, status, code, key, stream, outcome = kind
        child = self.child
        return _Series(
            (route, alias, provider, model, key),
            child(self.requests, route, alias, provider, model, str(status), code),
            child(self.duration, route, alias, provider),
            child(self.overhead, route),
            child(self.key_requests, key, str(status), code) if key != "-" else None,
            # A stream that started, however it ended.
            child(self.streams, route, outcome) if stream and outcome != "error" else None,
        )

    def render(self) -> bytes:
        self.tallies.drain()
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return bytes(generate_latest(registry))
        return bytes(generate_latest(self.registry))


class _Series:
    """The children one kind of request updates.

    Token, cost and attempt counters are looked up on first use: a kind that never
    reports tokens (errors) must not export a series of zeros.
    """

    __slots__ = ("duration", "key_requests", "labels", "overhead", "requests", "streams")

    def __init__(
        self,
        labels: tuple[str, str, str, str, str],
        requests: Any,
        duration: Any,
        overhead: Any,
        key_requests: Any,
        streams: Any,
    ) -> None:
        self.labels = labels  # route, alias, provider, bounded model, key
        self.requests = requests
        self.duration = duration
        self.overhead = overhead
        self.key_requests = key_requests
        self.streams = streams

    def add(self, counts: Counts, metrics: PrometheusMetrics) -> None:
        route, alias, provider, model, key = self.labels
        child = metrics.child
        self.requests.inc(counts.requests)
        _observed(self.duration, counts.duration, counts.duration_sum, _LATENCY_AT)
        _observed(self.overhead, counts.overhead, counts.overhead_sum, _OVERHEAD_AT)
        if self.key_requests is not None:  # tokens per key are in the usage report
            self.key_requests.inc(counts.requests)
        if self.streams is not None:
            self.streams.inc(counts.requests)
        if counts.ttft:
            ttft = child(metrics.ttft, route, alias, provider)
            _observed(ttft, counts.ttft, counts.ttft_sum, _LATENCY_AT)
        if counts.extra_attempts:
            child(metrics.extra_attempts, route, alias).inc(counts.extra_attempts)
        if counts.input_tokens:
            child(metrics.tokens, provider, model, "input").inc(counts.input_tokens)
        if counts.output_tokens:
            child(metrics.tokens, provider, model, "output").inc(counts.output_tokens)
        if counts.cost:
            child(metrics.cost, provider, model).inc(counts.cost)
            if key != "-":
                child(metrics.key_cost, key).inc(counts.cost)


def _bucket_of_each_bound(buckets: tuple[float, ...]) -> list[int]:
    """For each index of the tallies' BOUNDS (and +Inf), the metric's bucket it falls in.

    Every metric bound is one of BOUNDS, so a tallied bucket lies inside one of its own.
    """
    return [bisect_left(buckets, bound) for bound in BOUNDS] + [len(buckets)]


_LATENCY_AT = _bucket_of_each_bound(tuple(map(float, LATENCY_BUCKETS)))
_OVERHEAD_AT = _bucket_of_each_bound(tuple(map(float, OVERHEAD_BUCKETS)))


def _observed(child: Any, histogram: Buckets, total: float, bucket_at: list[int]) -> None:
    """Add tallied observations to a histogram's child, bucket by bucket."""
    if isinstance(child, HistogramChild):
        child.add(histogram, total, bucket_at)
        return
    # prometheus_client's (files, under --workers N) has no public way to add counts:
    # its per-bucket values (not cumulative) and its sum are what observe() changes.
    for at, count in histogram.items():
        child._buckets[bucket_at[at]].inc(count)
    child._sum.inc(total)


def _local_histogram(
    name: str,
    documentation: str,
    labelnames: list[str],
    *,
    buckets: tuple[float, ...],
    registry: CollectorRegistry,
) -> LocalHistogram:
    return LocalHistogram(name, documentation, labelnames, registry, buckets)


_IN_FLIGHT = (
    ("runestone_in_flight_requests", "Requests being answered now, streams included"),
    ("runestone_in_flight_streams", "Streams being relayed now"),
)


class _InFlight(Collector):
    """Requests and streams in flight, per route, as the tallies count them.

    In one process they are read at scrape time. Under ``--workers N`` they are real
    gauges in the shared directory, set from the tallies on every change and summed over
    the live processes.
    """

    def __init__(self, registry: CollectorRegistry, tallies: Tallies, multiprocess: bool) -> None:
        self._tallies = tallies
        self._gauges: dict[tuple[str, bool], Any] = {}
        if multiprocess:
            self._metrics = [
                Gauge(name, text, ["route"], registry=registry, multiprocess_mode="livesum")
                for name, text in _IN_FLIGHT
            ]
        else:
            registry.register(self)

    def publish(self) -> None:
        for key, count in self._tallies.in_flight.items():
            gauge = self._gauges.get(key)
            if gauge is None:
                route, stream = key
                gauge = self._gauges[key] = self._metrics[stream].labels(route)
            gauge.set(count)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for stream, (name, text) in enumerate(_IN_FLIGHT):
            family = GaugeMetricFamily(name, text, labels=["route"])
            for (route, of_stream), count in sorted(self._tallies.in_flight.items()):
                if of_stream == bool(stream):
                    family.add_metric([route], count)
            yield family
