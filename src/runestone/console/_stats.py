"""The console's numbers: an hour of traffic in ten-second slots, kept in memory.

A reader of the telemetry's tallies, like the Prometheus metrics, so no Prometheus
server is needed to see the gateway at a glance. Each slot holds counts and sparse
log-scale histograms (latency, time to first token, gateway overhead) per alias and
provider, taken from the tallies a kind of request at a time. Each window (5, 15, 60
minutes) keeps running totals of its finished slots, adding a slot when it finishes and
taking it away when it leaves the window, so a read costs the size of one slot, not of
an hour. Percentiles come from the histograms, to within one bucket (19%).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runestone.telemetry.tallies import (
    BOUNDS,
    SLOT_SECONDS,
    Counts,
    Failure,
    Histogram,
    Kind,
    Tallies,
    is_failure,
)

__all__ = ["BOUNDS", "SLOT_SECONDS", "WINDOWS", "ConsoleStats", "Failure", "percentile"]

WINDOWS = (5, 15, 60)  # minutes
SLOTS = max(WINDOWS) * 60 // SLOT_SECONDS


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


#: Targets counted under their own name; any more (clients name ``provider:model``
#: strings freely) are counted as ``other``, so the stats stay bounded.
MAX_TARGETS = 200


class ConsoleStats:
    """Reads the tallies; read it with ``window``, ``timeline``, ``failures``."""

    def __init__(self, tallies: Tallies) -> None:
        self._targets: set[str] = set()
        self._tallies = tallies
        self._clock = tallies.clock
        self._slots: deque[Slot] = deque(maxlen=SLOTS)
        self.started = self._clock()
        # Per window: the totals of its finished slots, and which slots those are.
        self._totals = {minutes: Tally() for minutes in WINDOWS}
        self._included: dict[int, deque[Slot]] = {minutes: deque() for minutes in WINDOWS}
        self._added_up_to = {minutes: -1 for minutes in WINDOWS}
        tallies.readers.append(self._take)

    @property
    def failures(self) -> deque[Failure]:
        return self._tallies.failures

    @property
    def in_flight(self) -> int:
        """Requests being answered now, streams included."""
        return sum(n for (_, stream), n in self._tallies.in_flight.items() if not stream)

    def _slot(self, index: int) -> Slot:
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

    def _take(self, index: int, batch: dict[Kind, Counts]) -> None:
        if not batch:
            return
        tally = self._slot(index).tally
        for kind, counts in batch.items():
            _, alias, provider, model, status, code, _, stream, outcome = kind
            n = counts.requests
            tally.requests += n
            series = tally.series.get((alias, provider))
            if series is None:
                series = tally.series[(alias, provider)] = Series()
            series.requests += n
            _add_counts(series.latency, counts.duration, 1)
            _add_counts(series.overhead, counts.overhead, 1)
            _add_counts(series.ttft, counts.ttft, 1)
            target = self._bounded(f"{provider}:{model}")
            row = tally.targets.get(target)
            if row is None:
                row = tally.targets[target] = [0, 0]
            row[0] += n
            if stream and outcome != "error":
                tally.outcomes[outcome] = tally.outcomes.get(outcome, 0) + n
            if counts.priced:
                numbers = [counts.input_tokens, counts.output_tokens, counts.cost, counts.priced]
                _add_row(tally.models, target, numbers, 1, requests_at=3)
            if is_failure(status, outcome):
                tally.errors += n
                series.errors += n
                row[1] += n
                code = code or "error"
                tally.codes[code] = tally.codes.get(code, 0) + n

    def _bounded(self, target: str) -> str:
        if target in self._targets:
            return target
        if len(self._targets) >= MAX_TARGETS:
            return "other"
        self._targets.add(target)
        return target

    def window(self, minutes: int, now: float | None = None) -> Tally:
        """The sums of the last ``minutes`` (one of ``WINDOWS``), this slot included."""
        now = self._clock() if now is None else now
        self._tallies.catch_up(now)
        current = int(now) // SLOT_SECONDS
        self._advance(current)
        made = self._totals[minutes].copy()
        if self._slots and self._slots[-1].index == current:
            made.add(self._slots[-1].tally)
        return made

    def timeline(self, minutes: int, now: float | None = None) -> list[tuple[int, int, int]]:
        """(slot start, requests, errors) for every slot of the window, empty ones too."""
        now = self._clock() if now is None else now
        self._tallies.catch_up(now)
        current = int(now) // SLOT_SECONDS
        by_index = {slot.index: slot.tally for slot in self._slots}
        points = []
        for index in range(current - minutes * 60 // SLOT_SECONDS + 1, current + 1):
            tally = by_index.get(index)
            points.append(
                (index * SLOT_SECONDS, tally.requests if tally else 0, tally.errors if tally else 0)
            )
        return points


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
