"""One narrow telemetry hook: the gateway emits events, subscribers turn them into signals.

The rest of the code never imports a metrics or tracing library: each request's exchange
(``runestone.exchange``) opens a ``RequestTrace``, and the HTTP layer one for a request
refused before an endpoint ran; which counts it in the tallies and emits the frozen events
of ``events`` to whoever listens; the router reports attempts through
``Telemetry.attempt_observer``. Readers of the tallies (Prometheus, the console) and
subscribers (the request log, OpenTelemetry) live in this package or the console's, and
a failing subscriber never fails a request.

Modules: ``events``, ``hub`` (the hook), ``trace`` (one request's accounting), ``usage``
(tokens as providers report them), ``tallies`` (running totals per kind of request, read
by the metrics and the console), ``prometheus``, ``logs``, ``otel``.
"""

from runestone.telemetry.events import (
    AliasReload,
    AttemptFinished,
    CacheLookup,
    Event,
    GuardDecision,
    Outcome,
    RequestFinished,
    StoreFailed,
)
from runestone.telemetry.hub import AttemptObserver, Subscriber, Telemetry
from runestone.telemetry.trace import Answer, RequestTrace

__all__ = [
    "AliasReload",
    "Answer",
    "AttemptFinished",
    "AttemptObserver",
    "CacheLookup",
    "Event",
    "GuardDecision",
    "Outcome",
    "RequestFinished",
    "RequestTrace",
    "StoreFailed",
    "Subscriber",
    "Telemetry",
]
