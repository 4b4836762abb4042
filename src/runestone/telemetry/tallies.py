"""Running totals of finished requests, one record per kind of request.

Every request is counted here once, by its ``RequestTrace``: a kind (route, alias,
target, status, code, key, stream, outcome) is looked up and a few numbers added, its
times put in buckets. The Prometheus metrics and the console do not hear of each
request: they take what was gathered (``drain``) when they are read, and when a
ten-second slot ends, so what each request costs does not grow with the number of views
of the traffic. Under ``--workers N`` the metrics must reach shared files before another
worker's scrape, so every change is handed on at once (``eager``).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass

SLOT_SECONDS = 10
FAILURES_KEPT = 100

#: Prometheus buckets, in seconds: whole requests and time to first token, and the
#: gateway's own overhead.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
#: Where times are counted: 0.1 ms to ~20 min, each bound at most 1.19 times the last,
#: and every Prometheus bucket bound, so that its ``le`` counts stay exact.
BOUNDS: tuple[float, ...] = tuple(
    sorted(
        {0.0001 * 1.19**i for i in range(90)} | {*map(float, LATENCY_BUCKETS + OVERHEAD_BUCKETS)}
    )
)

Histogram = dict[int, int]  # index into BOUNDS (len(BOUNDS) is +Inf) -> count, if any
#: route, alias, provider, model, status, code, client key id, stream, outcome
Kind = tuple[str, str, str, str, int, str, str, bool, str]
#: Called with the slot the requests finished in and their counts per kind.
Reader = Callable[[int, "dict[Kind, Counts]"], None]

_FAILED_OUTCOMES = ("error", "truncated", "upstream_error")


def is_failure(status: int, outcome: str) -> bool:
    """Whether a request counts as failed: an error status, or a stream that broke."""
    return status >= 400 or outcome in _FAILED_OUTCOMES


class Counts:
    """The requests of one kind: how many, their times in buckets, tokens and cost."""

    __slots__ = (
        "cost",
        "duration",
        "duration_sum",
        "extra_attempts",
        "input_tokens",
        "output_tokens",
        "overhead",
        "overhead_sum",
        "priced",
        "relayed",
        "requests",
        "ttft",
        "ttft_sum",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.relayed = 0  # requests whose stream's 200 went out
        self.duration: Histogram = defaultdict(int)
        self.duration_sum = 0.0
        self.overhead: Histogram = defaultdict(int)
        self.overhead_sum = 0.0
        self.ttft: Histogram = defaultdict(int)
        self.ttft_sum = 0.0
        self.extra_attempts = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost = 0.0
        self.priced = 0  # requests that reported tokens or had a cost


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed request, as the console lists it: ids and codes, never content."""

    at: float
    request_id: str
    route: str
    alias: str
    target: str
    status: int
    code: str
    attempts: int
    key: str


class Tallies:
    """What was counted since the last ``drain``, per kind, in ten-second slots.

    Readers (``readers``) are handed each slot's counts when it ends, and whatever was
    counted so far when one of them reads (``catch_up``, ``drain``).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.readers: list[Reader] = []
        #: Hand every change to the readers at once (metrics shared between processes).
        self.eager = False
        # Started per (route, relayed stream); finished, of what was handed on.
        self._started: dict[tuple[str, bool], int] = {}
        self._ended: dict[tuple[str, bool], int] = {}
        self.failures: deque[Failure] = deque(maxlen=FAILURES_KEPT)
        self._counts: dict[Kind, Counts] = {}
        self._slot = int(clock()) // SLOT_SECONDS
        self._slot_ends = (self._slot + 1) * SLOT_SECONDS

    @property
    def in_flight(self) -> dict[tuple[str, bool], int]:
        """Requests (False) and relayed streams (True) in flight, per route."""
        now = self._started.copy()
        for finished in (self._ended, self._pending_ends()):
            for key, count in finished.items():
                now[key] = now.get(key, 0) - count
        return now

    def _pending_ends(self) -> dict[tuple[str, bool], int]:
        ends: dict[tuple[str, bool], int] = defaultdict(int)
        for kind, counts in self._counts.items():
            ends[(kind[0], False)] += counts.requests
            if counts.relayed:
                ends[(kind[0], True)] += counts.relayed
        return ends

    def started(self, route: str, stream: bool) -> None:
        key = (route, stream)
        self._started[key] = self._started.get(key, 0) + 1
        if self.eager:
            self.drain()

    def finished(
        self,
        kind: Kind,
        relayed: bool,
        duration: float,
        overhead: float,
        ttft: float | None,
        input_tokens: int | None,
        output_tokens: int | None,
        cost: float | None,
        attempts: int,
    ) -> float:
        """Count one request; return the clock's time of it."""
        now = self.clock()
        if now >= self._slot_ends:
            self._next_slot(now)
        counts = self._counts.get(kind)
        if counts is None:
            counts = self._counts[kind] = Counts()
        counts.requests += 1
        counts.relayed += relayed
        counts.duration[bisect_left(BOUNDS, duration)] += 1
        counts.duration_sum += duration
        counts.overhead[bisect_left(BOUNDS, overhead)] += 1
        counts.overhead_sum += overhead
        if ttft is not None:
            counts.ttft[bisect_left(BOUNDS, ttft)] += 1
            counts.ttft_sum += ttft
        if attempts > 1:
            counts.extra_attempts += attempts - 1
        if input_tokens or output_tokens or cost:
            counts.priced += 1
            counts.input_tokens += input_tokens or 0
            counts.output_tokens += output_tokens or 0
            counts.cost += cost or 0.0
        if self.eager:
            self.drain()
        return now

    def drain(self) -> None:
        """Hand what was counted since the last drain to the readers; start afresh."""
        for key, count in self._pending_ends().items():
            self._ended[key] = self._ended.get(key, 0) + count
        counts, self._counts = self._counts, {}
        for reader in self.readers:
            reader(self._slot, counts)

    def catch_up(self, now: float) -> None:
        """A reader is about to read at ``now``: hand it everything counted before."""
        if now >= self._slot_ends:
            self._next_slot(now)
        else:
            self.drain()

    def _next_slot(self, now: float) -> None:
        self.drain()
        self._slot = int(now) // SLOT_SECONDS
        self._slot_ends = (self._slot + 1) * SLOT_SECONDS
