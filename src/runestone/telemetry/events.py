"""The telemetry events: small, immutable, built with keyword arguments only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

Outcome = Literal[
    "complete",
    "rescued",
    "error",
    "client_cancelled",
    "upstream_error",
    "truncated",
    "cached",
    "blocked",
]


class RequestFinished(NamedTuple):
    """One client request, when its answer has been sent (or has failed).

    Built only when a subscriber listens (``Telemetry.listening``): the metrics and
    the console count requests in the tallies instead.

    A named tuple, not a frozen dataclass as the other events: a frozen dataclass sets
    each of its 21 fields through a call (1.7 us against 0.5 us). Build it with keyword
    arguments, as the other events.
    """

    request_id: str
    route: str  # chat | messages | count_tokens | embeddings | responses
    alias: str  # the alias used, or "-" for a provider:model name
    provider: str  # "-" when no provider was reached
    model: str
    status: int
    duration: float  # seconds, request received to last byte sent
    outcome: Outcome
    code: str = ""  # "" on success, else the error code
    stream: bool = False
    relayed: bool = False  # the stream's 200 went out (it counted as an in-flight stream)
    attempts: int = 1
    upstream: float = 0.0  # seconds spent waiting on the upstream
    ttft: float | None = None  # seconds to the first streamed content, for streams
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost: float | None = None  # USD, when the target has a price
    started_ns: int = 0  # wall clock, for traces
    traceparent: str | None = None  # the client's W3C trace context, if it sent one
    rescued_from: str | None = None  # a stream completed after this target broke off
    key: str = "-"  # the client key's id (ids come from the alias file: bounded)
    cache: str | None = None  # the response cache's part: hit, miss or bypass

    @property
    def overhead(self) -> float:
        """Time the gateway itself added: everything not spent waiting on the upstream."""
        return max(self.duration - self.upstream, 0.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptFinished:
    """One attempt at one target (a retry or a fallback is another attempt)."""

    request_id: str
    provider: str
    model: str
    started_ns: int
    ended_ns: int
    code: str = ""  # "" on success


@dataclass(frozen=True, slots=True, kw_only=True)
class AliasReload:
    """The alias file was read: at start-up (``initial``), or reloaded after an edit."""

    ok: bool
    version: str
    initial: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreFailed:
    """The store of limits and budgets could not be reached (a request or a write)."""

    store: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheLookup:
    """The response cache was asked: ``hit`` (``saved`` USD not spent), ``miss`` or
    ``bypass``."""

    route: str
    result: str
    saved: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardDecision:
    """What one guard decided about one request's input or output: ``pass``, ``block``,
    ``redact``, ``log``, or ``error`` (its service failed; it then passed or blocked as
    its ``on_error`` says). Never the text, nor what was found in it."""

    route: str
    guard: str  # a name from the alias file: bounded
    stage: str  # input | output
    decision: str


Event = RequestFinished | AttemptFinished | AliasReload | StoreFailed | CacheLookup | GuardDecision
