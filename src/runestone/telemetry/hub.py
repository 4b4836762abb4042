"""The hook: ``Telemetry.emit`` hands each event to every subscriber."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from runestone.providers import Call
from runestone.telemetry.events import (
    AliasReload,
    AttemptFinished,
    CacheLookup,
    Event,
    GuardDecision,
    RequestFinished,
    StoreFailed,
)
from runestone.telemetry.tallies import Tallies

log = logging.getLogger("runestone.telemetry")

Subscriber = Callable[[Event], None]
#: Hears of every upstream attempt: (call, wall-clock start in ns, error code or "").
AttemptObserver = Callable[[Call, int, str], None]


_EVENT_TYPES: tuple[type[Event], ...] = (
    RequestFinished,
    AttemptFinished,
    AliasReload,
    StoreFailed,
    CacheLookup,
    GuardDecision,
)


class Telemetry:
    """The hook. ``emit`` costs one dict lookup and a loop over that event's subscribers.

    A subscriber may say which event types it wants in an ``EVENTS`` tuple; without
    one it hears every event. One that listens only at times (a log below its level)
    says so with a ``listening()`` method, so that nobody builds an event for nobody.
    Requests are counted in ``tallies``, which the metrics and the console read.
    """

    def __init__(self) -> None:
        self.tallies = Tallies()
        self._by_type: dict[type, list[Subscriber]] = {kind: [] for kind in _EVENT_TYPES}
        self._failed: set[int] = set()
        #: Someone listens to attempts and traces: the request path then records them.
        self.tracing = False

    def subscribe(self, subscriber: Subscriber, *, traces: bool = False) -> None:
        """Add a subscriber; ``traces`` turns on the per-attempt events it needs."""
        wanted = getattr(subscriber, "EVENTS", _EVENT_TYPES)
        for kind in _EVENT_TYPES:
            if kind in wanted:
                self._by_type[kind].append(subscriber)
        self.tracing = self.tracing or traces

    @property
    def attempt_observer(self) -> AttemptObserver | None:
        """What the attempt loop calls after each attempt, or None when nobody listens."""
        return self._attempt if self.tracing else None

    def _attempt(self, call: Call, began_ns: int, code: str) -> None:
        self.emit(
            AttemptFinished(
                request_id=call.request_id,
                provider=call.provider,
                model=call.model,
                started_ns=began_ns,
                ended_ns=time.time_ns(),
                code=code,
            )
        )

    def listening(self, kind: type[Event]) -> bool:
        """Whether a subscriber would hear an event of ``kind`` now."""
        for subscriber in self._by_type[kind]:
            listening = getattr(subscriber, "listening", None)
            if listening is None or listening():
                return True
        return False

    def emit(self, event: Event) -> None:
        for subscriber in self._by_type[type(event)]:
            try:
                subscriber(event)
            except Exception:
                if id(subscriber) not in self._failed:  # log once, not once per request
                    self._failed.add(id(subscriber))
                    log.exception("telemetry subscriber %r failed", subscriber)
