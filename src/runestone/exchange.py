"""One request's life, for the server and the library alike.

An ``Exchange`` reads the alias snapshot once, when the request starts, and runs the
request on it from there::

    exchange = Exchange(gateway, CHAT, request_id, key=key)
    try:
        await exchange.admit(body, raw)            # the key's limits and budgets
        routed = await exchange.complete(body)     # or open_stream(body)
        answer = exchange.answered(routed)         # what it used and cost, counted
    except GatewayError as exc:
        exchange.failed(exc)
        raise
    finally:
        exchange.close()                           # counted once, settled once

``close`` runs once whatever happened in between (an upstream error, a client gone at
any phase, a cancellation, a bug in the gateway): the trace counts the request, and the
admission is settled with what the trace found the request used, so its lease and its
reservation always come back. HTTP endpoints translate HTTP to an exchange and back;
the library's ``route_chat`` and ``route_stream`` call it directly, with the same limits
and accounting.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator

from runestone._gateway import Gateway
from runestone.access import Admission, Spent, end_user_of, rate_headers_for, tags_of
from runestone.aliases import KeySpec
from runestone.errors import GatewayError
from runestone.guards import GuardedStream, GuardRun
from runestone.protocols import ClientProtocol
from runestone.providers import Forwarded
from runestone.providers.adapter import NOTHING_FORWARDED
from runestone.routing import Routed, RoutedStream
from runestone.telemetry import Answer, RequestTrace


class Exchange:
    """One request: its alias snapshot, its admission, its trace; ``close`` it."""

    __slots__ = (
        "_closed",
        "_gateway",
        "_setup",
        "_streamed",
        "admission",
        "blocked",
        "end_user_header",
        "forward",
        "guards",
        "key",
        "protocol",
        "request_id",
        "table",
        "tags_header",
        "trace",
    )

    def __init__(
        self,
        gateway: Gateway,
        protocol: ClientProtocol,
        request_id: str,
        *,
        key: KeySpec | None = None,
        forward: Forwarded = NOTHING_FORWARDED,
        traceparent: str | None = None,
    ) -> None:
        self._gateway = gateway
        self.protocol = protocol
        self.request_id = request_id
        self.key = key
        self.forward = forward
        #: The alias table this request reads, whatever reloads happen meanwhile.
        self.table = gateway.aliases.table
        self.trace = RequestTrace(
            gateway.telemetry,
            request_id=request_id,
            route=protocol.operation,
            table=self.table,
            traceparent=traceparent,
        )
        if key is not None:
            self.trace.key = key.id
        self.admission: Admission | None = None
        #: The ``x-runestone-user`` and ``x-runestone-tags`` headers, if sent.
        self.end_user_header: str | None = None
        self.tags_header: str | None = None
        #: The request's guards (None: none apply), and the error a guard blocked it with.
        self.guards: GuardRun | None = None
        self.blocked: GatewayError | None = None
        self._closed = False
        self._setup = 0.0  # seconds from the request's arrival to its stream's 200
        self._streamed = False

    def __repr__(self) -> str:
        return f"<Exchange {self.request_id} {self.protocol.operation}>"

    def use_key(self, key: KeySpec) -> None:
        """The request is made with a client key (before ``admit``)."""
        self.key = key
        self.trace.key = key.id

    async def guard_request(self, body: dict[str, object]) -> bool:
        """Run the input guards that apply (its alias's, team's, key's) on the request,
        in place: whether they changed it. A block raises ``content_blocked``."""
        run = self._gateway.guards.for_request(
            self.table,
            str(body["model"]),
            self.key,
            route=self.protocol.operation,
            request_id=self.request_id,
        )
        self.guards = run
        return run is not None and await run.check_request(body)

    @property
    def guards_output(self) -> bool:
        """Whether output guards read the answer before it goes out."""
        return self.guards is not None and bool(self.guards.outputs)

    async def guard_answer(self, routed: Routed) -> None:
        """The output guards on a whole answer: redacted in place, or the request fails
        with ``content_blocked`` (the answer was used, and is booked all the same)."""
        assert self.guards is not None
        try:
            routed.reply.body = await self.guards.check_answer(routed.reply.body)
        except GatewayError as exc:
            self.blocked = exc
            self.trace.answered(
                target=routed.target,
                attempts=routed.attempts,
                upstream=routed.upstream,
                body=routed.reply.body,
                blocked=exc,
            )
            raise

    def guard_stream(
        self, routed: RoutedStream
    ) -> Callable[[AsyncGenerator[bytes, None]], AsyncGenerator[bytes, None]]:
        """What relays a stream's events through its output guards. A block ends the
        client's stream in-band; the upstream is read on for its usage, then cut."""
        assert self.guards is not None

        def block(error: GatewayError) -> None:
            self.blocked = error
            routed.read_on(error)

        scanner_error = routed.error_event
        guarded = GuardedStream(
            self.guards,
            lambda: routed.summary,
            lambda error: scanner_error(error, self.request_id),
            block,
        )
        return guarded.relay

    async def admit(self, body: dict[str, object], raw: bytes) -> None:
        """Take what the key's limits and budgets allow, or raise the client's error."""
        model = self.trace.model = str(body["model"])
        if self.key is not None:
            access = self._gateway.access
            end_user = end_user_of(body, self.end_user_header)
            tags = tags_of(self.tags_header)
            self.admission = await access.admit(
                self.key, self.table, model, body, raw, end_user, tags
            )

    def complete(self, body: dict[str, object]) -> Awaitable[Routed]:
        """Route a non-streamed request; its answer goes to ``answered``."""
        router = self._gateway.router
        assert router is not None, "the gateway starts before its first request"
        return router.complete(self.protocol, body, self.request_id, self.forward, self.table)

    def open_stream(self, body: dict[str, object]) -> Awaitable[RoutedStream]:
        """Route a streamed request; return once an upstream sent its first content.

        A request that books what it uses is read on for its usage, for a bounded time,
        if its client leaves before the end.
        """
        router = self._gateway.router
        assert router is not None, "the gateway starts before its first request"
        self._streamed = True
        drain = self._gateway.settings.usage_drain_seconds if self.admission else 0.0
        return router.open_stream(
            body, self.request_id, self.protocol, self.forward, self.table, drain_for=drain
        )

    def answered(self, routed: Routed) -> Answer:
        """A non-streamed answer is about to be sent: count it, return its figures."""
        return self.trace.answered(
            target=routed.target,
            attempts=routed.attempts,
            upstream=routed.upstream,
            body=routed.reply.body,
        )

    def stream_started(self) -> None:
        """The 200 of a stream is going out."""
        self._setup = self.trace.stream_started()

    def stream_ended(self, routed: RoutedStream, *, client_gone: bool) -> None:
        """A relayed stream ended (complete, cut by its client, or failed in-band)."""
        summary = routed.summary
        self.trace.stream_ended(
            target=routed.target,
            attempts=routed.attempts,
            connecting=routed.upstream,
            setup=self._setup,
            summary_usage=summary.usage,
            done=summary.done and self.blocked is None,
            error=self.blocked or summary.error,
            client_gone=client_gone,
            rescued_from=routed.rescued_from,
        )

    def rate_headers(self) -> list[tuple[bytes, bytes]]:
        """The ``x-ratelimit-*`` headers of the key's limits (none without a key)."""
        return rate_headers_for(self.admission, self._gateway.access.clock())

    def failed(self, error: GatewayError) -> None:
        """The request ends in ``error``, before any answer went out."""
        self.trace.failed(error, stream=self._streamed)

    @contextlib.contextmanager
    def lifetime(self) -> Iterator[Exchange]:
        """The request's life as a block: an error is counted, and ``close`` runs once
        whatever happens (the server's endpoint writes this out, to spare a frame)."""
        escaped: BaseException | None = None
        try:
            yield self
        except GatewayError as exc:
            self.failed(exc)
            raise
        except BaseException as exc:
            escaped = exc
            raise
        finally:
            self.close(escaped)

    def close(self, escaped: BaseException | None = None) -> None:
        """The request is over: count it (if nothing did yet) and settle its admission.

        ``escaped`` is what ended it, if not an answer or a ``failed`` error (a client
        gone before its body arrived, a cancellation, a bug).
        """
        if self._closed:
            return
        self._closed = True
        self.trace.close(escaped)
        admission = self.admission
        if admission is None:
            return
        account = self.trace.account
        if account is None:
            self._gateway.access.settle(admission)
            return
        used = account.usage
        spent = Spent(
            account.target,
            account.charged,
            used.input,
            used.output,
            account.cost,
            account.partial,
        )
        self._gateway.access.settle(admission, spent)
