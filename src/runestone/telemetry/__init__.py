"""One narrow telemetry hook: the gateway emits events, subscribers turn them into signals.

The rest of the code never imports a metrics or tracing library; it calls ``emit`` with
one of the frozen events below. Subscribers (Prometheus, the request log) live in this
package, and a failing subscriber never fails a request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger("runestone.telemetry")

Outcome = Literal["complete", "error", "client_cancelled", "upstream_error", "truncated"]


@dataclass(frozen=True, slots=True)
class RequestFinished:
    """One client request, when its answer has been sent (or has failed)."""

    request_id: str
    route: str  # chat | messages | count_tokens | embeddings
    alias: str  # the alias used, or "-" for a provider:model name
    provider: str  # "-" when no provider was reached
    model: str
    status: int
    code: str  # "" on success, else the error code
    stream: bool
    attempts: int
    duration: float  # seconds, request received to last byte sent
    upstream: float  # seconds spent waiting on the upstream
    ttft: float | None  # seconds to the first streamed content, for streams
    input_tokens: int | None
    output_tokens: int | None
    outcome: Outcome
    cost: float | None = None  # USD, when the target has a price
    started_ns: int = 0  # wall clock, for traces
    traceparent: str | None = None  # the client's W3C trace context, if it sent one

    @property
    def overhead(self) -> float:
        """Time the gateway itself added: everything not spent waiting on the upstream."""
        return max(self.duration - self.upstream, 0.0)


@dataclass(frozen=True, slots=True)
class AttemptFinished:
    """One attempt at one target (a retry or a fallback is another attempt)."""

    request_id: str
    provider: str
    model: str
    started_ns: int
    ended_ns: int
    code: str  # "" on success


@dataclass(frozen=True, slots=True)
class AliasReload:
    ok: bool
    version: str


Event = RequestFinished | AttemptFinished | AliasReload
Subscriber = Callable[[Event], None]


class Telemetry:
    """The hook. ``emit`` costs one loop over the subscribers."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._failed: set[int] = set()

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def emit(self, event: Event) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception:
                if id(subscriber) not in self._failed:  # log once, not once per request
                    self._failed.add(id(subscriber))
                    log.exception("telemetry subscriber %r failed", subscriber)


__all__ = [
    "AliasReload",
    "AttemptFinished",
    "Event",
    "Outcome",
    "RequestFinished",
    "Subscriber",
    "Telemetry",
]
