"""One routed stream through explicit states: connecting -> streaming -> done | failed.

While connecting, each attempt's upstream stream is read up to its first content event
and nothing reaches the client yet, so a failure is still retried or failed over. Once
streaming, the status and target are fixed: any failure, including the request's
deadline passing, ends the stream in-band. The stream keeps its attempt record, the
candidates it has not tried and the deadline, so that a later state (continuing on
another target) has what it needs.

An illegal move (streaming before connecting, connecting twice) raises
``IllegalTransition``: a bug in the caller, never a client's fault.
"""

from __future__ import annotations

import enum
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence

from runestone.aliases import Policy, Target
from runestone.errors import GatewayError, error_for
from runestone.protocols import ClientProtocol
from runestone.providers import Call, UpstreamStream
from runestone.routing._leg import Leg
from runestone.routing.attempts import Candidate, Observer, counts_against, run_attempts
from runestone.routing.rescue import relay_with_rescue
from runestone.streams import StreamSummary
from runestone.streams.clocks import Clocks, Deadline, Pace
from runestone.streams.relay import relay_stream
from runestone.streams.sse import MAX_EVENT_BYTES

OpenUpstream = Callable[[Call], Awaitable[UpstreamStream]]


class StreamState(enum.Enum):
    CONNECTING = "connecting"
    STREAMING = "streaming"
    DONE = "done"
    FAILED = "failed"


_MOVES: dict[StreamState, frozenset[StreamState]] = {
    StreamState.CONNECTING: frozenset({StreamState.STREAMING, StreamState.FAILED}),
    StreamState.STREAMING: frozenset({StreamState.DONE, StreamState.FAILED}),
    StreamState.DONE: frozenset(),
    StreamState.FAILED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A routed stream was asked to move to a state it cannot reach from its own."""


class RoutedStream:
    """A streamed request: its attempts while connecting, then the relay of one upstream.

    Built by the router; ``connect`` runs the attempts, ``events`` relays the accepted
    upstream, and ``close`` (client gone, failure) or ``aclose`` (relayed to the end)
    releases it.
    """

    __slots__ = (
        "_draining",
        "_leg",
        "_observe",
        "_open_upstream",
        "_state",
        "attempts",
        "candidates",
        "client_gone",
        "clocks",
        "context_fallback",
        "deadline",
        "drain_for",
        "max_event_bytes",
        "policy",
        "protocol",
        "read_timeout",
        "remaining",
        "request_id",
        "rescued_from",
        "upstream",
    )

    def __init__(
        self,
        *,
        request_id: str,
        protocol: ClientProtocol,
        candidates: Sequence[Candidate],
        policy: Policy,
        context_fallback: Sequence[Candidate] | None = (),
        open_upstream: OpenUpstream,
        observe: Observer | None = None,
        max_event_bytes: int = MAX_EVENT_BYTES,
        read_timeout: float | None = None,
        drain_for: float = 0.0,
    ) -> None:
        self.request_id = request_id
        self.protocol = protocol
        self.candidates = tuple(candidates)
        self.context_fallback = None if context_fallback is None else tuple(context_fallback)
        self.policy = policy
        self.deadline = Deadline(policy.timeout)
        self._open_upstream = open_upstream
        self._observe = observe
        self.max_event_bytes = max_event_bytes
        self._state = StreamState.CONNECTING
        self._leg: Leg | None = None
        #: The stream's alarms (its deadline mid-stream, the read-on after its client
        #: left) and the bound on the upstream's silence: one ``stop`` ends them.
        self.clocks = Clocks()
        #: Upstream silence allowed once streaming (the alias's idle_timeout first).
        self.read_timeout = policy.idle_timeout or read_timeout
        self.attempts = 0
        self.upstream = 0.0  # seconds spent connecting (attempts, backoff, first content)
        #: Candidates not tried yet, in the order they would have been tried.
        self.remaining: tuple[Candidate, ...] = ()
        #: The target whose stream broke and was completed from another (on_stream_cut).
        self.rescued_from: Target | None = None
        #: Seconds the upstream is read on after the client left, to learn the usage that
        #: comes at a stream's end (0: cut at once).
        self.drain_for = drain_for
        self.client_gone = False
        self._draining = False

    def __repr__(self) -> str:
        target = f" {self.target}" if self._leg is not None else ""
        return f"<RoutedStream {self.request_id} {self._state.value}{target}>"

    @property
    def state(self) -> StreamState:
        return self._state

    def _move(self, to: StreamState) -> None:
        if to not in _MOVES[self._state]:
            raise IllegalTransition(f"{self!r} cannot move to {to.value}")
        self._state = to

    @property
    def target(self) -> Target:
        return self._accepted().candidate.target

    @property
    def upstream_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        """What the accepted upstream's adapter has for the client (``Reply.headers``)."""
        headers: tuple[tuple[bytes, bytes], ...] = getattr(self._accepted().stream, "headers", ())
        return headers

    @property
    def summary(self) -> StreamSummary:
        return self._accepted().scanner.summary

    def _accepted(self) -> Leg:
        if self._leg is None:
            raise IllegalTransition(f"{self!r} has no upstream yet")
        return self._leg

    async def connect(self) -> None:
        """Try the candidates until one streams its first content; raise if none does."""
        if self._state is not StreamState.CONNECTING or self._leg is not None:
            raise IllegalTransition(f"{self!r} cannot connect again")
        started = time.perf_counter()
        try:
            done = await run_attempts(
                self.candidates,
                self.policy,
                self.deadline,
                self.open_leg,
                attempt_timeout=self.policy.stream_attempt_timeout(),
                last_attempt_timeout=self.policy.stream_attempt_timeout(last=True),
                hold=True,
                observe=self._observe,
                context_fallback=self.context_fallback,
            )
        except BaseException:
            self._move(StreamState.FAILED)
            raise
        self._leg = done.result
        self._leg.lease = done.lease
        self.attempts = done.attempts
        self.remaining = done.remaining
        self.upstream = time.perf_counter() - started
        self._move(StreamState.STREAMING)
        if not self._leg.scanner.summary.done:  # a whole answer leaves nothing to cut
            self.clocks.at("deadline", self.deadline.at, self._expire)

    async def open_leg(self, candidate: Candidate, call: Call | None = None) -> Leg:
        """Open ``candidate`` (its ``call``, or another) and read up to its first content."""
        call = candidate.call if call is None else call
        stream = await self._open_upstream(call)
        scanner = self.protocol.scanner
        assert scanner is not None, f"{self.protocol.operation} does not stream"
        leg = Leg(candidate, stream, scanner(call.provider, call.add_stream_usage))
        leg.scanner.limit = self.max_event_bytes
        await leg.prime()
        return leg

    def _expire(self) -> None:
        self.end_now(
            error_for(
                "gateway_timeout",
                f"the request's deadline of {self.deadline.seconds:g}s passed mid-stream; "
                "the answer is incomplete",
                provider=self.target.provider,
            )
        )

    def events(self) -> AsyncGenerator[bytes, None]:
        """The SSE bytes for the client, ending with the protocol's end or error event."""
        if self._state is not StreamState.STREAMING:
            raise IllegalTransition(f"{self!r} cannot relay")
        leg = self._accepted()
        first, leg.primed = leg.primed, b""
        self._watch_silence(leg)
        if self.policy.on_stream_cut == "continue" and self.remaining:
            return relay_with_rescue(self, leg, first)
        return relay_stream(
            leg.chunks, leg.scanner, self.request_id, first, pace=self.pace(), failure=leg.failure
        )

    def whole_answer(self) -> bytes:
        """The answer that came whole with its first content (``summary.done``): what
        ``events`` would yield, in one piece."""
        if self._state is not StreamState.STREAMING or not self.summary.done:
            raise IllegalTransition(f"{self!r} has no whole answer")
        leg = self._accepted()
        answer, leg.primed = leg.primed, b""
        return answer

    def _watch_silence(self, leg: Leg) -> None:
        """Bound the upstream's silence with one timer per stream, not one per read: an
        upstream stream that can drop its transport's read timer (re-armed on every read)
        is bounded by the stream's clocks instead."""
        drop = getattr(leg.stream, "drop_read_timeout", None)
        if drop is None or not self.read_timeout or leg.scanner.summary.done:
            return
        drop()
        self.clocks.bound_silence(self.read_timeout, self._silent)

    def pace(self) -> Pace | None:
        silence = self.clocks.silence
        return silence.pace if silence is not None else None

    def _silent(self, limit: float) -> None:
        provider = self.target.provider
        self.end_now(
            error_for(
                "upstream_timeout",
                f"{provider} sent nothing for {limit:g}s mid-stream; the answer is incomplete",
                provider=provider,
            )
        )

    def switch(self, broken: Leg, leg: Leg) -> None:
        """The rescue is committed: the broken leg is settled, the new one relayed."""
        broken.stream.close()
        broken.release()
        breaker = broken.candidate.breaker
        error = broken.scanner.summary.error
        if error is not None and counts_against(error):
            breaker.record_failure()
        self.rescued_from = broken.candidate.target
        self._leg = leg

    def client_left(self) -> None:
        """The client went away mid-stream. The usage comes at a stream's end: with
        ``drain_for`` the upstream is read on (its events relayed to no one) until it
        ends or that many seconds pass, then cut; without, it is cut now."""
        self.client_gone = True
        leg = self._leg
        summary = leg.scanner.summary if leg is not None else None
        if summary is None or summary.done or self.drain_for <= 0:  # usage is final at the end
            self.cancel()
        elif not self._draining:
            self._draining = True
            self.clocks.after("drain", self.drain_for, self.cancel)

    def read_on(self, error: GatewayError) -> None:
        """Nothing more of it goes to the client (a guard blocked the answer). The usage
        comes at a stream's end: the upstream is read on for ``drain_for`` seconds, to
        its end or until then, and then cut with ``error``."""
        leg = self._leg
        if leg is None or leg.scanner.summary.done:
            return
        if self.drain_for <= 0:
            self.end_now(error)
        elif not self._draining:
            self._draining = True
            self.clocks.after("drain", self.drain_for, lambda: self.end_now(error))

    def error_event(self, error: GatewayError, request_id: str | None) -> bytes:
        """The in-band event that ends this stream with ``error``, in its protocol."""
        return self._accepted().scanner.error_event(error, request_id)

    def cancel(self) -> None:
        """The client went away: end the answer as its fault, not the upstream's."""
        leg = self._leg
        if leg is not None:
            summary = leg.scanner.summary
            if not summary.done and summary.error is None:
                summary.error = error_for(
                    "client_disconnected",
                    "the client disconnected before the stream ended",
                    provider=leg.candidate.target.provider,
                )
        self.close()

    def end_now(self, error: GatewayError) -> None:
        """Cut a stream from outside (a deadline, a shutdown): it ends with ``error`` in-band."""
        leg = self._leg
        if leg is None or leg.scanner.summary.done or leg.scanner.summary.error is not None:
            return
        leg.scanner.summary.error = error
        leg.stream.close()

    def close(self) -> None:
        """Drop the upstream connection at once (the client went away, or it failed)."""
        if self._leg is not None:
            self._leg.stream.close()
        self._settle()

    async def aclose(self) -> None:
        """Release the upstream: kept for reuse after a complete stream, else cut."""
        leg = self._leg
        if leg is not None and leg.scanner.summary.done:
            await leg.stream.finish()
        elif leg is not None:
            leg.stream.close()
        self._settle()

    def _settle(self) -> None:
        self.clocks.stop()
        if self._state is not StreamState.STREAMING:
            return  # settled already, or never connected
        leg = self._accepted()
        summary = leg.scanner.summary
        self._move(StreamState.DONE if summary.done else StreamState.FAILED)
        leg.release()
        breaker = leg.candidate.breaker
        if summary.error is not None and counts_against(summary.error):
            breaker.record_failure()
