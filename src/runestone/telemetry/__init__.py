"""One narrow telemetry hook: the gateway emits events, subscribers turn them into signals.

The rest of the code never imports a metrics or tracing library: the HTTP layer opens a
``RequestTrace`` per request, which emits the frozen events of ``events``; the router
reports attempts through ``Telemetry.attempt_observer``. Subscribers (Prometheus, the
request log, OpenTelemetry) live in this package, and a failing subscriber never fails
a request.

Modules: ``events``, ``hub`` (the hook), ``trace`` (one request's accounting), ``usage``
(tokens as providers report them), ``prometheus``, ``logs``, ``otel``.
"""

from runestone.telemetry.events import (
    AliasReload,
    AttemptFinished,
    Event,
    InFlight,
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
    "Event",
    "InFlight",
    "Outcome",
    "RequestFinished",
    "RequestTrace",
    "StoreFailed",
    "Subscriber",
    "Telemetry",
]
