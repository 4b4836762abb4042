"""The model API endpoints: one ``ProxyEndpoint`` per client protocol.

HTTP in, an ``Exchange`` (the request's life: admission, routing, accounting), HTTP
out: reads and checks the body in the route's protocol, and sends the answer (JSON) or
relays the stream.
"""

from __future__ import annotations

import contextlib

import orjson

from runestone._gateway import Gateway
from runestone._version import __version__
from runestone.access import check_model
from runestone.cache import Decision, decide
from runestone.conversations import Pending
from runestone.errors import GatewayError
from runestone.exchange import Exchange
from runestone.http._asgi import (
    Receive,
    Scope,
    Send,
    header_value,
    parse_json,
    read_body,
    send_json,
)
from runestone.http._relay import ClientState, ClientWatch, relay_to_client
from runestone.http.endpoints._cached import StreamTap, cache_header, send_hit
from runestone.http.endpoints.responses import refuse_dropped_tools
from runestone.http.middleware.auth import owner_of
from runestone.http.middleware.errors import COUNTED, REQUEST_ID, STARTED
from runestone.protocols import ClientProtocol
from runestone.providers import Forwarded
from runestone.routing import Routed, RoutedStream
from runestone.telemetry import CacheLookup

_PRODUCT = f" runestone/{__version__}"
#: Who a request is for, and its tags: booked with its use, never sent upstream.
_END_USER = b"x-runestone-user"
_TAGS = b"x-runestone-tags"
_CACHE_CONTROL = b"cache-control"
_PRODUCT_AGENT = _PRODUCT[1:]


class ProxyEndpoint:
    def __init__(self, protocol: ClientProtocol, gateway: Gateway, *, stores: bool = False) -> None:
        self.protocol = protocol
        self.gateway = gateway
        #: The Responses API's store: conversations filled in from it, answers kept in it.
        self._conversations = gateway.conversations if stores else None
        self._max_body = gateway.settings.max_body_bytes
        self._heartbeat = gateway.settings.heartbeat_seconds
        # The request headers read here: most of a client's (an SDK sends a dozen and
        # more) are passed over with one test each.
        self._read = protocol.forward_headers | {
            b"content-length",
            b"user-agent",
            b"traceparent",
            _END_USER,
            _TAGS,
            _CACHE_CONTROL,
        }
        #: The exact response cache, for the operations it serves.
        self._cache = gateway.cache if protocol.operation != "count_tokens" else None
        self._max_cached = gateway.settings.cache_bounds.max_entry

    def __repr__(self) -> str:
        return f"<ProxyEndpoint {self.protocol.operation}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        protocol = self.protocol
        request_id: str = scope[REQUEST_ID]
        declared, forward, traceparent, extras = self._read_headers(scope)
        exchange = Exchange(
            self.gateway,
            protocol,
            request_id,
            key=scope["auth"].key,
            forward=forward,
            traceparent=traceparent,
        )
        cache_control = None
        if extras is not None:
            exchange.end_user_header, exchange.tags_header, cache_control = extras
        scope[COUNTED] = True  # the exchange's trace counts it, whatever happens
        escaped: BaseException | None = None
        decision: Decision | None = None
        try:
            raw = await read_body(receive, self._max_body, declared)
            body = protocol.validate(parse_json(raw))
            if await exchange.guard_request(body):
                raw = orjson.dumps(body)  # what the request carries now is what it costs
            pending = None
            if self._conversations is not None:
                refuse_dropped_tools(body, self.gateway, exchange)
                sent = body
                body, pending = await self._conversations.prepare(body, owner_of(scope))
                if body is not sent:  # what the request carries now is what it costs
                    raw = orjson.dumps(body)
            if self._cache is not None and self._cache.may_apply(exchange.table, exchange.key):
                decision = decide(
                    exchange.table,
                    exchange.key,
                    owner_of(scope),
                    protocol.operation,
                    body,
                    cache_control,
                    exchange.guards.fingerprint if exchange.guards is not None else "",
                )
                if decision is not None and await self._answered_from_cache(
                    decision, exchange, send, str(body["model"])
                ):
                    return
            await exchange.admit(body, raw)
            if protocol.scanner is not None and body.get("stream") is True:
                watch = ClientWatch(receive, send, self._heartbeat)
                try:
                    routed = await watch.connecting(exchange.open_stream(body))
                except BaseException:
                    watch.stop()
                    raise
                scope[STARTED] = True  # from here on, errors end the stream in-band
                await self._relay(routed, exchange, watch, send, pending, decision)
            else:
                # Awaited here, not in a helper: one frame fewer for every resumption.
                answered = await exchange.complete(body)
                if exchange.guards_output:
                    await exchange.guard_answer(answered)
                headers = self._answer_headers(answered, request_id, exchange)
                if pending is not None:
                    await self._keep(pending, orjson.loads(answered.reply.body))
                if decision is not None:
                    headers += cache_header(decision)
                await send_json(send, 200, answered.reply.body, headers)
                if decision is not None:
                    self._store(
                        decision, exchange, answered.reply.content_type, answered.reply.body
                    )
        except GatewayError as exc:
            exchange.failed(exc)
            raise
        except BaseException as exc:
            escaped = exc
            raise
        finally:
            exchange.close(escaped)
            if decision is not None and self._cache is not None:
                self._cache.finish(decision, None)  # a leader that failed frees its followers

    async def _answered_from_cache(
        self, decision: Decision, exchange: Exchange, send: Send, model: str
    ) -> bool:
        """Send the stored answer if there is one (or an identical request in flight
        brings one); count the lookup either way."""
        cache = self._cache
        assert cache is not None
        if exchange.key is not None:
            check_model(exchange.key, model)  # no answer, cached or not, for another model
        entry = await cache.lookup(decision)
        if entry is None and decision.read:
            entry = await cache.follow(decision)
        exchange.trace.cache = decision.state
        self.gateway.telemetry.emit(
            CacheLookup(
                route=self.protocol.operation,
                result=decision.state,
                saved=entry.cost if entry is not None else None,
            )
        )
        if entry is None:
            return False
        exchange.trace.model = model
        await send_hit(send, entry, exchange.request_id)
        exchange.trace.served_from_cache(target=entry.target, stream=entry.stream)
        return True

    def _store(
        self, decision: Decision, exchange: Exchange, content_type: bytes | str, body: bytes
    ) -> None:
        account = exchange.trace.account
        if account is None or not decision.write:
            return
        kind = content_type.decode("latin-1") if isinstance(content_type, bytes) else content_type
        assert self._cache is not None
        entry = self._cache.entry(decision, kind, body, account.target, account.cost)
        self._cache.finish(decision, entry)

    def _read_headers(
        self, scope: Scope
    ) -> tuple[int | None, Forwarded, str | None, tuple[str | None, str | None, str | None] | None]:
        """In one pass: the declared body length, what goes upstream, the trace context.

        What goes upstream of the client's own format: the headers its protocol forwards,
        its query string, and its user-agent with Runestone's product token appended, so
        that a provider's logs still say which application called.
        """
        read = self._read
        declared = traceparent = end_user = tags = cache_control = None
        headers = {"user-agent": _PRODUCT_AGENT}
        for name, value in scope["headers"]:
            if name not in read:
                continue
            if name == b"content-length":
                with contextlib.suppress(ValueError):
                    declared = int(value)
            elif name == b"user-agent":
                headers["user-agent"] = value.decode("latin-1") + _PRODUCT
            elif name == b"traceparent":
                traceparent = value.decode("latin-1")
            elif name == _END_USER:
                end_user = value.decode("utf-8", "replace")
            elif name == _TAGS:
                tags = value.decode("latin-1")
            elif name == _CACHE_CONTROL:
                cache_control = value.decode("latin-1")
            else:
                headers[name.decode()] = value.decode("latin-1")
        query: bytes = scope.get("query_string", b"")
        extras = None
        if end_user is not None or tags is not None or cache_control is not None:
            extras = (end_user, tags, cache_control)
        return declared, Forwarded(headers, query.decode("latin-1")), traceparent, extras

    @staticmethod
    def _answer_headers(
        routed: Routed, request_id: str, exchange: Exchange
    ) -> list[tuple[bytes, bytes]]:
        """The answer's accounting is done, and its headers say what it found."""
        reply = routed.reply
        answer = exchange.answered(routed)
        overhead, upstream = b"%.3f" % answer.overhead_ms, answer.upstream_ms
        headers = [
            (b"content-type", reply.content_type),
            (b"x-request-id", request_id.encode()),
            (b"x-runestone-target", header_value(str(routed.target))),
            (b"x-runestone-attempts", str(routed.attempts).encode()),
            (b"x-runestone-overhead-ms", overhead),
            (b"server-timing", b"gateway;dur=%s, upstream;dur=%.3f" % (overhead, upstream)),
        ]
        if answer.cost is not None:
            headers.append((b"x-runestone-cost-usd", b"%.8f" % answer.cost))
        if reply.headers:
            headers += reply.headers
        if exchange.admission is not None:
            headers += exchange.rate_headers()
        return headers

    async def _keep(self, pending: Pending, response: object) -> None:
        assert self._conversations is not None
        await self._conversations.keep(pending, response)

    async def _relay(
        self,
        routed: RoutedStream,
        exchange: Exchange,
        watch: ClientWatch,
        send: Send,
        pending: Pending | None = None,
        decision: Decision | None = None,
    ) -> None:
        headers = exchange.rate_headers() if exchange.admission is not None else None
        tap = None
        if decision is not None:
            headers = (headers or []) + cache_header(decision)
            if decision.write:
                send = tap = StreamTap(send, self._max_cached)
        exchange.stream_started()

        def finished(state: ClientState) -> None:
            exchange.stream_ended(routed, client_gone=state.client_gone)

        async def keep() -> None:
            assert pending is not None
            if exchange.blocked is None:  # a blocked answer is not kept
                await self._keep(pending, routed.summary.final)

        streams = self.gateway.streams
        streams.add(routed)
        try:
            before_end = keep if pending is not None else None
            through = exchange.guard_stream(routed) if exchange.guards_output else None
            await relay_to_client(routed, watch, send, finished, headers, before_end, through)
        finally:
            streams.discard(routed)
        summary = routed.summary
        if (
            tap is not None
            and summary.done
            and summary.error is None
            and exchange.blocked is None
            and not watch.state.client_gone
        ):
            kept = tap.body()
            if kept is not None:
                assert decision is not None
                self._store(decision, exchange, tap.content_type, kept)
