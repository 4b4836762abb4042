"""The console's numbers: an hour of traffic in ten-second slots, kept in memory.

A telemetry subscriber, like the Prometheus metrics, so no Prometheus server is needed
to see the gateway at a glance. Each slot holds counts and sparse log-scale histograms
(latency, time to first token, gateway overhead) per alias and provider. Each window
(5, 15, 60 minutes) keeps running totals of its finished slots, adding a slot when it
finishes and taking it away when it leaves the window, so a read costs the size of one
slot, not of an hour. Percentiles come from the histograms, to within one bucket (19%).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runestone.telemetry.events import Event, InFlight, RequestFinished

SLOT_SECONDS = 10
WINDOWS = (5, 15, 60)  # minutes
SLOTS = max(WINDOWS) * 60 // SLOT_SECONDS
FAILURES_KEPT = 100

#: Histogram bucket bounds in seconds: 0.1 ms to ~20 min, each 1.19 times the last.
BOUNDS: tuple[float, ...] = tuple(0.0001 * 1.19**i for i in range(90))

Histogram = dict[int, int]  # bucket index -> count, only buckets that have any


@dataclass(slots=True)
class Series:
    """One alias and provider's requests."""

    requests: int = 0
    errors: int = 0
    latency: Histogram = field(default_factory=dict)
    ttft: Histogram = field(default_factory=dict)
    overhead: Histogram = field(default_factory=dict)

    def add(self, other: Series, sign: int) -> None:
        self.requests += sign * other.requests
        self.errors += sign * other.errors
        for mine, theirs in (
            (self.latency, other.latency),
            (self.ttft, other.ttft),
            (self.overhead, other.overhead),
        ):
            _add_counts(mine, theirs, sign)


@dataclass(slots=True)
class Tally:
    """The sums of some requests: a slot's, or a window's."""

    requests: int = 0
    errors: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    series: dict[tuple[str, str], Series] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    models: dict[str, list[float]] = field(default_factory=dict)  # [in, out, cost, requests]
    targets: dict[str, list[int]] = field(default_factory=dict)  # [requests, errors]

    def add(self, other: Tally, sign: int = 1) -> None:
        self.requests += sign * other.requests
        self.errors += sign * other.errors
        _add_counts(self.codes, other.codes, sign)
        _add_counts(self.outcomes, other.outcomes, sign)
        for key, part in other.series.items():
            mine = self.series.get(key)
            if mine is None:
                mine = self.series[key] = Series()
            mine.add(part, sign)
            if not mine.requests:
                del self.series[key]
        for name, numbers in other.models.items():
            _add_row(self.models, name, numbers, sign, requests_at=3)
        for name, counts in other.targets.items():
            _add_row(self.targets, name, counts, sign, requests_at=0)

    def copy(self) -> Tally:
        made = Tally()
        made.add(self)
        return made


def _add_row(
    table: dict[str, Any], name: str, numbers: Sequence[float], sign: int, requests_at: int
) -> None:
    found = table.get(name)
    if found is None:
        found = table[name] = [0] * len(numbers)
    for index, value in enumerate(numbers):
        found[index] += sign * value
    if not found[requests_at]:
        del table[name]


def _add_counts(mine: dict[Any, int], theirs: Mapping[Any, int], sign: int) -> None:
    for key, count in theirs.items():
        total = mine.get(key, 0) + sign * count
        if total:
            mine[key] = total
        else:
            mine.pop(key, None)


@dataclass(slots=True)
class Slot:
    index: int  # seconds since the epoch // SLOT_SECONDS
    tally: Tally = field(default_factory=Tally)


@dataclass(frozen=True, slots=True)
class Failure:
    at: float
    request_id: str
    route: str
    alias: str
    target: str
    status: int
    code: str
    attempts: int
    key: str


class ConsoleStats:
    """Subscribe it to the telemetry hook; read it with ``window``, ``timeline``,
    ``failures``."""

    EVENTS = (InFlight, RequestFinished)

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._slots: deque[Slot] = deque(maxlen=SLOTS)
        self.failures: deque[Failure] = deque(maxlen=FAILURES_KEPT)
        self.in_flight = 0
        self.started = clock()
        # Per window: the totals of its finished slots, and which slots those are.
        self._totals = {minutes: Tally() for minutes in WINDOWS}
        self._included: dict[int, deque[Slot]] = {minutes: deque() for minutes in WINDOWS}
        self._added_up_to = {minutes: -1 for minutes in WINDOWS}

    def __call__(self, event: Event) -> None:
        if type(event) is InFlight:
            if not event.stream:
                self.in_flight += 1
            return
        if type(event) is RequestFinished:
            self.in_flight -= 1
            self._record(event)

    def _slot(self, now: float) -> Slot:
        index = int(now) // SLOT_SECONDS
        slots = self._slots
        if slots and slots[-1].index == index:
            return slots[-1]
        self._advance(index)  # before the oldest slot can drop off the deque
        slot = Slot(index)
        slots.append(slot)
        return slot

    def _advance(self, current: int) -> None:
        """Bring every window's totals up to the slots finished before ``current``."""
        for minutes, totals in self._totals.items():
            included = self._included[minutes]
            first = current - minutes * 60 // SLOT_SECONDS
            for slot in self._slots:
                if self._added_up_to[minutes] < slot.index < current:
                    included.append(slot)
                    totals.add(slot.tally)
                    self._added_up_to[minutes] = slot.index
            while included and included[0].index <= first:
                totals.add(included.popleft().tally, -1)

    def _record(self, e: RequestFinished) -> None:
        now = self._clock()
        tally = self._slot(now).tally
        failed = e.status >= 400 or e.outcome in ("error", "truncated", "upstream_error")
        tally.requests += 1
        key = (e.alias, e.provider)
        series = tally.series.get(key)
        if series is None:
            series = tally.series[key] = Series()
        series.requests += 1
        _count(series.latency, bisect_left(BOUNDS, e.duration))
        _count(series.overhead, bisect_left(BOUNDS, e.overhead))
        if e.ttft is not None:
            _count(series.ttft, bisect_left(BOUNDS, e.ttft))
        target = f"{e.provider}:{e.model}"
        counts = tally.targets.get(target)
        if counts is None:
            counts = tally.targets[target] = [0, 0]
        counts[0] += 1
        if e.stream and e.outcome != "error":
            _count(tally.outcomes, e.outcome)
        if e.input_tokens or e.output_tokens or e.cost:
            model = tally.models.get(target)
            if model is None:
                model = tally.models[target] = [0, 0, 0.0, 0]
            model[0] += e.input_tokens or 0
            model[1] += e.output_tokens or 0
            model[2] += e.cost or 0.0
            model[3] += 1
        if failed:
            tally.errors += 1
            series.errors += 1
            counts[1] += 1
            code = e.code or "error"
            _count(tally.codes, code)
            self.failures.append(
                Failure(
                    now, e.request_id, e.route, e.alias, target, e.status, code, e.attempts, e.key
                )
            )

    def window(self, minutes: int, now: float | None = None) -> Tally:
        """The sums of the last ``minutes`` (one of ``WINDOWS``), this slot included."""
        current = int(self._clock() if now is None else now) // SLOT_SECONDS
        self._advance(current)
        made = self._totals[minutes].copy()
        if self._slots and self._slots[-1].index == current:
            made.add(self._slots[-1].tally)
        return made

    def timeline(self, minutes: int, now: float | None = None) -> list[tuple[int, int, int]]:
        """(slot start, requests, errors) for every slot of the window, empty ones too."""
        current = int(self._clock() if now is None else now) // SLOT_SECONDS
        by_index = {slot.index: slot.tally for slot in self._slots}
        points = []
        for index in range(current - minutes * 60 // SLOT_SECONDS + 1, current + 1):
            tally = by_index.get(index)
            points.append(
                (index * SLOT_SECONDS, tally.requests if tally else 0, tally.errors if tally else 0)
            )
        return points


def _count(histogram: dict[Any, int], key: object) -> None:
    histogram[key] = histogram.get(key, 0) + 1


def percentile(histogram: Histogram, share: float) -> float | None:
    """The bucket bound below which ``share`` of the observations fall, in seconds."""
    total = sum(histogram.values())
    if not total:
        return None
    wanted = share * total
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= wanted:
            return BOUNDS[min(index, len(BOUNDS) - 1)]
    return BOUNDS[-1]
