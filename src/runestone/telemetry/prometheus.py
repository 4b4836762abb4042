"""Prometheus metrics, a subscriber of the telemetry hook; served at ``GET /metrics``.

Under ``runestone serve --workers N`` every worker writes to ``PROMETHEUS_MULTIPROC_DIR``
(the CLI creates one) and a scrape of any worker sums them all.

Labels stay bounded: no request ids, no raw user strings; a model label past the first
``MAX_MODELS`` distinct ones is reported as ``other``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from runestone.telemetry._local_metrics import LocalCounter, LocalHistogram
from runestone.telemetry.events import AliasReload, Event, InFlight, RequestFinished, StoreFailed

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_MODELS = 200
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_OVERHEAD = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


class PrometheusMetrics:
    EVENTS = (InFlight, RequestFinished, AliasReload, StoreFailed)

    def __init__(self, breakers: Callable[[], Iterable[dict[str, object]]] | None = None) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
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
            buckets=_LATENCY,
            registry=r,
        )
        self.overhead = histogram(
            "runestone_gateway_overhead_seconds",
            "Time not spent waiting on the upstream",
            ["route"],
            buckets=_OVERHEAD,
            registry=r,
        )
        self.ttft = histogram(
            "runestone_time_to_first_token_seconds",
            "Streams: request to first content",
            ["route", "alias", "provider"],
            buckets=_LATENCY,
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
        self.in_flight = _InFlight(r, self.multiprocess)
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
        # What every request updates, per kind of request: one lookup, not one per metric.
        self._series: dict[tuple[str, str, str, str, int, str, str], _Series] = {}
        self._version: str | None = None
        if breakers is not None and not self.multiprocess:
            r.register(_BreakerCollector(breakers))

    def __call__(self, event: Event) -> None:
        if isinstance(event, InFlight):
            self.in_flight.change(event.route, event.stream, 1)
        elif isinstance(event, RequestFinished):
            self._request(event)
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

    def _request(self, e: RequestFinished) -> None:
        self.in_flight.change(e.route, False, -1)
        if e.relayed:
            self.in_flight.change(e.route, True, -1)
        model = self._model(e.model)
        kind = (e.route, e.alias, e.provider, model, e.status, e.code, e.key)
        series = self._series.get(kind)
        if series is None:
            series = self._series[kind] = self._new_series(kind)
        series.requests.inc()
        series.duration.observe(e.duration)
        series.overhead.observe(e.overhead)
        child = self.child
        if e.attempts > 1:
            child(self.extra_attempts, e.route, e.alias).inc(e.attempts - 1)
        if e.input_tokens:
            (series.input or series.tokens("input", self)).inc(e.input_tokens)
        if e.output_tokens:
            (series.output or series.tokens("output", self)).inc(e.output_tokens)
        if e.cost:
            child(self.cost, e.provider, model).inc(e.cost)
            if series.key_requests is not None:
                child(self.key_cost, e.key).inc(e.cost)
        if series.key_requests is not None:  # tokens per key are in the usage report
            series.key_requests.inc()
        if e.stream and e.outcome != "error":  # a stream that started, however it ended
            child(self.streams, e.route, e.outcome).inc()
            if e.ttft is not None:
                child(self.ttft, e.route, e.alias, e.provider).observe(e.ttft)

    def _new_series(self, kind: tuple[str, str, str, str, int, str, str]) -> _Series:
        route, alias, provider, model, status, code, key = kind
        child = self.child
        return _Series(
            provider,
            model,
            child(self.requests, route, alias, provider, model, str(status), code),
            child(self.duration, route, alias, provider),
            child(self.overhead, route),
            child(self.key_requests, key, str(status), code) if key != "-" else None,
        )

    def render(self) -> bytes:
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return bytes(generate_latest(registry))
        return bytes(generate_latest(self.registry))


class _Series:
    """The children one kind of request (route, alias, target, status, code, key) updates.

    Token counters are looked up on first use: a kind that never reports tokens (errors)
    must not export a series of zeros.
    """

    __slots__ = (
        "duration",
        "input",
        "key_requests",
        "model",
        "output",
        "overhead",
        "provider",
        "requests",
    )

    def __init__(
        self,
        provider: str,
        model: str,
        requests: Any,
        duration: Any,
        overhead: Any,
        key_requests: Any,
    ) -> None:
        self.provider = provider
        self.model = model
        self.requests = requests
        self.duration = duration
        self.overhead = overhead
        self.key_requests = key_requests
        self.input: Any = None
        self.output: Any = None

    def tokens(self, direction: str, metrics: PrometheusMetrics) -> Any:
        found = metrics.child(metrics.tokens, self.provider, self.model, direction)
        setattr(self, direction, found)
        return found


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
    """Requests and streams in flight, per route.

    In one process these are plain counts, read at scrape time: a prometheus_client
    gauge takes a lock on every change, twice per request. Under ``--workers N`` they
    are real gauges in the shared directory, summed over the live processes.
    """

    def __init__(self, registry: CollectorRegistry, multiprocess: bool) -> None:
        self._counts: dict[tuple[str, bool], int] = {}
        self._gauges: dict[tuple[str, bool], Any] | None = None
        if multiprocess:
            self._gauges = {}
            self._metrics = [
                Gauge(name, text, ["route"], registry=registry, multiprocess_mode="livesum")
                for name, text in _IN_FLIGHT
            ]
        else:
            registry.register(self)

    def change(self, route: str, stream: bool, by: int) -> None:
        key = (route, stream)
        if self._gauges is None:
            self._counts[key] = self._counts.get(key, 0) + by
            return
        gauge = self._gauges.get(key)
        if gauge is None:
            gauge = self._gauges[key] = self._metrics[stream].labels(route)
        gauge.inc(by)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for stream, (name, text) in enumerate(_IN_FLIGHT):
            family = GaugeMetricFamily(name, text, labels=["route"])
            for (route, of_stream), count in sorted(self._counts.items()):
                if of_stream == bool(stream):
                    family.add_metric([route], count)
            yield family


class _BreakerCollector(Collector):
    """Breaker states, read at scrape time (one process's view)."""

    def __init__(self, breakers: Callable[[], Iterable[dict[str, object]]]) -> None:
        self._breakers = breakers

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "runestone_breaker_state",
            "Circuit breaker per target: 0 closed, 1 half open, 2 open",
            labels=["target"],
        )
        for breaker in self._breakers():
            value = {"closed": 0, "half_open": 1, "open": 2}[str(breaker["state"])]
            family.add_metric([str(breaker["target"])], value)
        yield family
