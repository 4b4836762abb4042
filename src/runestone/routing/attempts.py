"""The attempt loop: target order, retries with backoff, one deadline, breakers.

For one request the router hands over its targets (in the alias's order) and an
operation that tries one target. The loop:

- orders targets by the alias's strategy (``fallback``, ``weighted``, ``least_busy``);
- skips targets whose breaker is open, and fails fast with ``no_healthy_upstream`` when
  that is every target;
- retries a *retryable* failure on the same target up to ``retries`` times, after a full-
  jitter exponential backoff or the upstream's ``Retry-After``; when that wait would pass
  the deadline it moves to the next target instead of sleeping;
- moves to the next target after a gateway-side failure (a rejected key, a missing SDK)
  or an exhausted target; never retries nor fails over a client error;
- bounds every attempt, and all of them together, by the request's deadline.

Retries and failover happen only here, before the first byte reaches the client.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from runestone.aliases import Policy, Strategy, Target
from runestone.errors import GatewayError, drop_tracebacks, error_for
from runestone.providers import Call
from runestone.routing.breakers import CircuitBreaker, Lease
from runestone.streams.clocks import AttemptLimit, Deadline

T = TypeVar("T")

#: Hears of every attempt: (call, wall-clock start in ns, error code or "").
Observer = Callable[[Call, int, str], None]

BACKOFF_BASE = 0.25
BACKOFF_CAP = 8.0


def backoff(retry: int) -> float:
    """Full jitter: uniform between 0 and base * 2**retry, capped."""
    return random.uniform(0.0, min(BACKOFF_CAP, BACKOFF_BASE * (2**retry)))


@dataclass(slots=True)  # built per request: see Call
class Candidate:
    target: Target
    call: Call
    breaker: CircuitBreaker


def order(strategy: Strategy, candidates: Sequence[Candidate]) -> list[Candidate]:
    """The order to try targets in; every target stays in the list as a fallback."""
    if strategy == "weighted" and len(candidates) > 1:
        # A weighted random permutation: key u**(1/w), largest first.
        keyed = [(random.random() ** (1.0 / c.target.weight), c) for c in candidates]
        return [c for _, c in sorted(keyed, key=lambda pair: pair[0], reverse=True)]
    if strategy == "least_busy" and len(candidates) > 1:
        return sorted(candidates, key=lambda c: c.breaker.in_flight)  # stable: ties in order
    return list(candidates)


@dataclass(slots=True)
class Attempted(Generic[T]):
    result: T
    candidate: Candidate
    attempts: int
    #: The candidates that were not tried, in the order they would have been.
    remaining: tuple[Candidate, ...] = ()
    #: With ``hold``: the winner's place in its breaker's in-flight count, for the
    #: caller to release when the answer has been relayed.
    lease: Lease | None = None


def counts_against(error: GatewayError) -> bool:
    """Whether a failure is evidence that the target is unhealthy."""
    return error.fault == "upstream" and error.retryable


async def run_attempts(
    candidates: Sequence[Candidate],
    policy: Policy,
    deadline: Deadline,
    attempt: Callable[[Candidate], Awaitable[T]],
    *,
    attempt_timeout: float | None = None,
    last_attempt_timeout: float | None = None,
    hold: bool = False,
    observe: Observer | None = None,
    context_fallback: Sequence[Candidate] | None = (),
) -> Attempted[T]:
    """Try targets until one answers; raise the ``GatewayError`` that ends the request.

    ``attempt_timeout`` bounds each attempt on top of the deadline (the first-token
    timeout of a stream) while another target is left to try, ``last_attempt_timeout``
    the attempts at the last one: a bound meant to fail over need not cut the only
    answer left. With ``hold``, the winning target's lease on its breaker's
    in-flight count is handed to the caller (``Attempted.lease``). An exception that is
    not a ``GatewayError`` is a bug: it is neither retried nor held against the target.
    ``observe`` hears of every attempt: (call, wall-clock start in ns, error code or "").

    A target that times out (``attempt_timeout``: it accepted the request and stayed
    silent) is not retried: a silent provider stays silent, so the next target is tried
    at once. A ``context_length_exceeded`` moves the request, unchanged, to the
    ``context_fallback`` targets, or with ``None`` (the default of an alias) on to its
    other targets; never back to one that refused it. With ``()`` it is the client's
    error, as any other.
    """
    attempts = 0
    last: GatewayError | None = None
    tried: Candidate | None = None
    refused: list[CircuitBreaker] = []
    paused_first: Candidate | None = None
    started = time.perf_counter()
    queue = deque(order(policy.strategy, candidates))
    on_to_the_rest = context_fallback is None
    fallback = context_fallback or ()
    too_long: list[Target] = []
    while queue:
        candidate = queue.popleft()
        if candidate.target in too_long:
            continue  # it refused this prompt as too long already
        breaker = candidate.breaker
        for retry in range(policy.retries + 1):
            if not breaker.allow():
                refused.append(breaker)
                paused_first = paused_first or candidate
                break
            remaining = deadline.remaining()
            if remaining <= 0:
                raise _ending(_timed_out(deadline, last), attempts, tried, started)
            bound = attempt_timeout if queue else last_attempt_timeout
            limit = remaining if bound is None else min(remaining, bound)
            attempts += 1
            tried = candidate
            lease = Lease(breaker)
            began = time.time_ns() if observe is not None else 0
            silent = False
            expiry = AttemptLimit(deadline.loop, limit)
            try:
                try:
                    result = await attempt(candidate)
                finally:
                    expired = expiry.end()
            except (asyncio.CancelledError, TimeoutError) as exc:
                if isinstance(exc, asyncio.CancelledError) and not expired:
                    lease.release()  # the request was called off (the client left)
                    raise
                silent = deadline.remaining() > 0
                error = (
                    error_for(
                        "upstream_timeout",
                        f"{candidate.call.provider} sent nothing within {limit:.3g}s",
                        provider=candidate.call.provider,
                    )
                    if silent
                    else _timed_out(deadline, last)
                )
            except GatewayError as exc:
                drop_tracebacks(exc)  # kept as ``last``: no cycle through this frame
                error = exc
            except BaseException:
                # A bug of the gateway's (or an exit): never the target's fault, never
                # retried; it reaches the outside as itself, and becomes internal_error.
                lease.release()
                raise
            else:
                breaker.record_success()
                if not hold:
                    lease.release()
                if observe is not None:
                    observe(candidate.call, began, "")
                rest = tuple(queue) if hold else ()  # streams keep them
                return Attempted(result, candidate, attempts, rest, lease if hold else None)
            lease.release()
            if observe is not None:
                observe(candidate.call, began, error.code)
            if error.code == "gateway_timeout":
                breaker.record_failure()
                raise _ending(error, attempts, tried, started)
            if counts_against(error):
                breaker.record_failure()
            elif error.code == "context_length_exceeded" and (
                fallback or too_long or on_to_the_rest
            ):
                breaker.record_success()  # it answered: the prompt is too long for it
                too_long.append(candidate.target)
                if fallback:  # from now on only the larger-context targets
                    queue = deque(c for c in fallback if c.target not in too_long)
                    fallback = ()
                last = error
                break
            elif error.fault == "client":
                breaker.record_success()  # the upstream answered; the request was wrong
                raise _ending(error, attempts, tried, started)
            last = error
            if silent:
                break  # it accepted the request and said nothing: not worth a retry
            if not error.retryable or retry == policy.retries:
                break  # this target is done: the next one may still answer
            wait = error.retry_after if error.retry_after is not None else backoff(retry)
            if wait >= deadline.remaining():
                break  # sleeping would pass the deadline: try the next target now
            await asyncio.sleep(wait)
    if last is None and refused:
        retry_in = min(b.retry_in() for b in refused)
        paused = error_for(
            "no_healthy_upstream",
            "every target is failing and paused by its circuit breaker: "
            + ", ".join(b.key for b in refused),
            retry_after=max(retry_in, 1.0),
        )
        # Where it would have gone: no attempt was made, but the target is known.
        raise _ending(paused, attempts, tried or paused_first, started)
    assert last is not None
    raise _ending(last, attempts, tried, started)


def _ending(
    error: GatewayError, attempts: int, tried: Candidate | None, started: float
) -> GatewayError:
    """The error that ends the request, with what its attempts were and cost."""
    error.attempts = attempts
    error.target = str(tried.target) if tried is not None else None
    error.upstream = time.perf_counter() - started
    return error


def _timed_out(deadline: Deadline, last: GatewayError | None) -> GatewayError:
    detail = f"; last failure: {last.message}" if last is not None else ""
    return error_for(
        "gateway_timeout",
        f"the request's deadline of {deadline.seconds:g}s passed{detail}",
        provider=last.provider if last is not None else None,
    )
