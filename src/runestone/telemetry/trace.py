"""One request's accounting, from its arrival to its count in the tallies.

The exchange (``runestone.exchange``) opens a ``RequestTrace`` when a request arrives and
tells it what happened (answered, failed, streamed); the trace works out usage, cost,
overhead and the stream's outcome once, in an ``Account`` that limits and budgets book
too, so no endpoint does accounting itself. Like httpcore's ``Trace``:
the core reports, and what becomes a signal is decided elsewhere.

Every trace counts its request in flight when it opens (and its stream when that
starts), and counts it finished exactly once in the ``Tallies`` when it closes, whatever
path the request took, including a client that left early or a bug: the in-flight
gauges always return to zero. A ``RequestFinished`` event is built only when a
subscriber listens for one (the request log at INFO, tracing).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple

from runestone.aliases import AliasTable, Target
from runestone.errors import GatewayError
from runestone.pricing import packaged_prices
from runestone.telemetry import usage
from runestone.telemetry.events import Outcome, RequestFinished
from runestone.telemetry.hub import Telemetry
from runestone.telemetry.tallies import Failure, is_failure
from runestone.telemetry.usage import UNKNOWN, Usage


class Account(NamedTuple):
    """What a finished request used, worked out once for telemetry and for limits."""

    #: The target that answered (``provider:model``), or the name the client asked for.
    target: str
    usage: Usage
    cost: float | None
    #: Whether an upstream answered (whole or streamed): what it used costs money.
    charged: bool
    #: The answer came from two targets: the first one's usage is never reported.
    partial: bool = False


@dataclass(slots=True)  # built per request: see Call
class Answer:
    """What a non-streamed answer's headers report: the gateway's own time and the cost."""

    overhead_ms: float
    upstream_ms: float
    cost: float | None


class RequestTrace:
    """Accounting for one request; ``close`` it in a ``finally``."""

    __slots__ = (
        "_finished",
        "_relayed",
        "_table",
        "account",
        "cache",
        "key",
        "model",
        "request_id",
        "route",
        "started",
        "started_ns",
        "telemetry",
        "traceparent",
    )

    def __init__(
        self,
        telemetry: Telemetry,
        *,
        request_id: str,
        route: str,
        table: AliasTable,
        traceparent: str | None = None,
    ) -> None:
        self.telemetry = telemetry
        self.request_id = request_id
        self.route = route
        self.model = ""  # the requested name, once the body has been read
        self.key = "-"  # the client key's id, once authenticated by one
        self.cache: str | None = None  # hit, miss or bypass, when a cache applies
        #: What the request used, once finished (what limits and budgets book).
        self.account: Account | None = None
        self.traceparent = traceparent
        self.started = time.perf_counter()
        self.started_ns = time.time_ns()
        self._table = table
        self._relayed = False
        self._finished = False  # counted once per request, whatever happens
        telemetry.tallies.started(route, False)

    def close(self, error: BaseException | None = None) -> None:
        """The request is over; if nothing was reported, report how it ended.

        ``error`` is what escaped the endpoint: a client that left before its body
        arrived (``client_gone``), or a bug.
        """
        if self._finished:
            return
        client_gone = type(error).__name__ == "ClientGone"
        self._finish(
            provider="-",
            model="-",
            status=499 if client_gone else 500,
            code="client_disconnected" if client_gone else "internal_error",
            attempts=0,
            duration=time.perf_counter() - self.started,
            outcome="client_cancelled" if client_gone else "error",
        )

    def _alias(self) -> str:
        # Only names from the alias file become labels: client strings stay out of metrics.
        # A name matched by a pattern is labelled with the pattern.
        if self.model in self._table.aliases:
            return self.model
        alias = self._table.match(self.model) if self._table.patterns else None
        return alias.name if alias is not None else "-"

    def _cost(self, spec: str, used: Usage) -> float | None:
        if used.input is None or used.output is None:
            return None
        price = self._table.prices.get(spec) or packaged_prices().get(spec)
        if price is None:
            return None
        return price.cost(used.input, used.output, used.cached, used.written)

    def answered(
        self,
        *,
        target: Target,
        attempts: int,
        upstream: float,
        body: bytes,
        blocked: GatewayError | None = None,
    ) -> Answer:
        """A non-streamed answer is about to be sent: emit its event, return its figures.

        A ``blocked`` answer (a guard refused it) is used and paid for all the same; the
        client gets the guard's error instead.
        """
        elapsed = time.perf_counter() - self.started
        route = self.route
        if route == "count_tokens":  # a count costs nothing and uses no tokens
            used, charged = UNKNOWN, False
        else:
            used = usage.from_body(body, target.provider, output=route != "embeddings")
            charged = True
        spec = str(target)
        cost = self._cost(spec, used)
        self.account = Account(spec, used, cost, charged)
        given, taken = used.input, used.output
        self._finish(
            provider=target.provider,
            model=target.model,
            status=200 if blocked is None else blocked.status,
            code="" if blocked is None else blocked.code,
            attempts=attempts,
            duration=elapsed,
            upstream=upstream,
            input_tokens=given,
            output_tokens=taken,
            outcome="complete" if blocked is None else "blocked",
            cost=cost,
        )
        overhead = max(elapsed - upstream, 0.0)
        return Answer(overhead * 1000, upstream * 1000, cost)

    def served_from_cache(self, *, target: str, stream: bool) -> None:
        """The answer came from the response cache: no upstream, nothing charged."""
        provider, _, model = target.partition(":")
        self.account = Account(target, UNKNOWN, 0.0, False)
        self._finish(
            provider=provider or "-",
            model=model or "-",
            status=200,
            stream=stream,
            attempts=0,
            duration=time.perf_counter() - self.started,
            outcome="cached",
            cost=0.0,
        )

    def failed(self, error: GatewayError, *, stream: bool) -> None:
        """The request ends in an error envelope (nothing was streamed)."""
        if self._finished:
            return
        provider, _, model = (error.target or "").partition(":")
        self._finish(
            provider=provider or error.provider or "-",
            model=model or "-",
            status=error.status,
            code=error.code,
            stream=stream,
            attempts=error.attempts,
            duration=time.perf_counter() - self.started,
            upstream=error.upstream,
            outcome="blocked" if error.code == "content_blocked" else "error",
        )

    def stream_started(self) -> float:
        """The 200 of a stream is going out; return the seconds it took to get here."""
        self._relayed = True
        self.telemetry.tallies.started(self.route, True)
        return time.perf_counter() - self.started

    def stream_ended(
        self,
        *,
        target: Target,
        attempts: int,
        connecting: float,
        setup: float,
        summary_usage: object,
        done: bool,
        error: GatewayError | None,
        client_gone: bool,
        rescued_from: Target | None = None,
    ) -> None:
        """A relayed stream ended: complete, cut by the client, or failed in-band.

        ``connecting`` is the seconds spent on attempts before the first content;
        ``setup`` the seconds from the request's arrival to the 200.
        """
        outcome: Outcome
        if client_gone:
            outcome = "client_cancelled"
        elif error is not None and error.code == "content_blocked":
            outcome = "blocked"
        elif done:
            outcome = "rescued" if rescued_from is not None else "complete"
        elif error is not None and error.code == "upstream_stream_interrupted":
            outcome = "truncated"
        else:
            outcome = "upstream_error"
        used = usage.read(summary_usage, target.provider)
        spec = str(target)
        cost = self._cost(spec, used)
        self.account = Account(spec, used, cost, True, rescued_from is not None)
        given, taken = used.input, used.output
        duration = time.perf_counter() - self.started
        code = "client_disconnected" if client_gone else error.code if error is not None else ""
        self._finish(
            provider=target.provider,
            model=target.model,
            status=499 if client_gone else 200,
            code=code,
            stream=True,
            attempts=attempts,
            duration=duration,
            # The relay's own time is not the gateway's: it waits on the upstream.
            upstream=max(duration - setup + connecting, 0.0),
            ttft=setup,
            input_tokens=given,
            output_tokens=taken,
            outcome=outcome,
            cost=cost,
            rescued_from=str(rescued_from) if rescued_from is not None else None,
        )

    def _finish(
        self,
        *,
        provider: str,
        model: str,
        status: int,
        duration: float,
        outcome: Outcome,
        code: str = "",
        stream: bool = False,
        attempts: int = 1,
        upstream: float = 0.0,
        ttft: float | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cost: float | None = None,
        rescued_from: str | None = None,
    ) -> None:
        self._finished = True
        alias = self._alias()
        telemetry = self.telemetry
        tallies = telemetry.tallies
        now = tallies.finished(
            (self.route, alias, provider, model, status, code, self.key, stream, outcome),
            self._relayed,
            duration,
            max(duration - upstream, 0.0),
            ttft,
            input_tokens,
            output_tokens,
            cost,
            attempts,
        )
        if is_failure(status, outcome):
            tallies.failures.append(
                Failure(
                    now,
                    self.request_id,
                    self.route,
                    alias,
                    f"{provider}:{model}",
                    status,
                    code or "error",
                    attempts,
                    self.key,
                )
            )
        if telemetry.listening(RequestFinished):
            telemetry.emit(
                RequestFinished(
                    request_id=self.request_id,
                    route=self.route,
                    alias=alias,
                    provider=provider,
                    model=model,
                    status=status,
                    duration=duration,
                    outcome=outcome,
                    code=code,
                    stream=stream,
                    relayed=self._relayed,
                    attempts=attempts,
                    upstream=upstream,
                    ttft=ttft,
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    cost=cost,
                    started_ns=self.started_ns,
                    traceparent=self.traceparent,
                    rescued_from=rescued_from,
                    key=self.key,
                    cache=self.cache,
                )
            )
