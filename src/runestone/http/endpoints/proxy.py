"""The model API endpoints: one ``ProxyEndpoint`` per client protocol.

Reads and checks the body in the route's protocol, hands it to the router, and sends
the answer (JSON) or relays the stream; a ``RequestTrace`` does the accounting.
"""

from __future__ import annotations

import contextlib

from runestone._gateway import Gateway
from runestone._version import __version__
from runestone.access import Admission, rate_headers
from runestone.errors import GatewayError
from runestone.http._asgi import (
    Receive,
    Scope,
    Send,
    header_value,
    parse_json,
    read_body,
    send_json,
)
from runestone.http._relay import ClientWatch, StreamState, relay_to_client
from runestone.http.middleware.errors import REQUEST_ID, STARTED
from runestone.protocols import ClientProtocol
from runestone.providers import Forwarded
from runestone.routing import Routed, RoutedStream
from runestone.telemetry import RequestTrace

_PRODUCT = f" runestone/{__version__}"
_PRODUCT_AGENT = _PRODUCT[1:]


class ProxyEndpoint:
    def __init__(self, protocol: ClientProtocol, gateway: Gateway) -> None:
        self.protocol = protocol
        self.gateway = gateway
        self._max_body = gateway.settings.max_body_bytes
        self._heartbeat = gateway.settings.heartbeat_seconds
        # The request headers read here: most of a client's (an SDK sends a dozen and
        # more) are passed over with one test each.
        self._read = protocol.forward_headers | {b"content-length", b"user-agent", b"traceparent"}

    def __repr__(self) -> str:
        return f"<ProxyEndpoint {self.protocol.operation}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gateway = self.gateway
        router = gateway.router
        assert router is not None, "the gateway starts before its first request"
        protocol = self.protocol
        request_id: str = scope[REQUEST_ID]
        declared, forward, traceparent = self._read_headers(scope)
        trace = RequestTrace(
            gateway.telemetry,
            request_id=request_id,
            route=protocol.operation,
            table=gateway.aliases.table,
            traceparent=traceparent,
        )
        stream = False
        escaped: BaseException | None = None
        admission: Admission | None = None
        try:
            raw = await read_body(receive, self._max_body, declared)
            body = protocol.validate(parse_json(raw))
            trace.model = str(body["model"])
            key = scope["auth"].key
            if key is not None:
                trace.key = key.id
                admission = await gateway.access.admit(
                    key, gateway.aliases.table, trace.model, body, len(raw), request_id
                )
            if protocol.scanner is not None and body.get("stream") is True:
                stream = True
                watch = ClientWatch(receive, send, self._heartbeat)
                try:
                    opening = router.open_stream(body, request_id, protocol, forward)
                    routed = await watch.connecting(opening)
                except BaseException:
                    watch.stop()
                    raise
                scope[STARTED] = True  # from here on, errors end the stream in-band
                limits = _limit_headers(admission, gateway.access.clock())
                await self._relay(routed, trace, watch, send, limits)
            else:
                # Awaited here, not in a helper: one frame fewer for every resumption.
                answered = await router.complete(protocol, body, request_id, forward)
                headers = self._answer_headers(answered, request_id, trace)
                if admission is not None:
                    headers += _limit_headers(admission, gateway.access.clock())
                await send_json(send, 200, answered.reply.body, headers)
        except GatewayError as exc:
            trace.failed(exc, stream=stream)
            raise
        except BaseException as exc:
            escaped = exc
            raise
        finally:
            trace.close(escaped)
            if admission is not None:
                target, cost, given, taken = trace.spent or (trace.model, None, None, None)
                gateway.access.settle(admission, target, cost, given, taken)

    def _read_headers(self, scope: Scope) -> tuple[int | None, Forwarded, str | None]:
        """In one pass: the declared body length, what goes upstream, the trace context.

        What goes upstream of the client's own format: the headers its protocol forwards,
        its query string, and its user-agent with Runestone's product token appended, so
        that a provider's logs still say which application called.
        """
        read = self._read
        declared = traceparent = None
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
            else:
                headers[name.decode()] = value.decode("latin-1")
        query: bytes = scope.get("query_string", b"")
        return declared, Forwarded(headers, query.decode("latin-1")), traceparent

    @staticmethod
    def _answer_headers(
        routed: Routed, request_id: str, trace: RequestTrace
    ) -> list[tuple[bytes, bytes]]:
        """The answer's accounting is done, and its headers say what it found."""
        reply = routed.reply
        answer = trace.answered(
            target=routed.target,
            attempts=routed.attempts,
            upstream=routed.upstream,
            body=reply.body,
        )
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
        return headers

    async def _relay(
        self,
        routed: RoutedStream,
        trace: RequestTrace,
        watch: ClientWatch,
        send: Send,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        setup = trace.stream_started()

        def finished(state: StreamState) -> None:
            summary = routed.summary
            trace.stream_ended(
                target=routed.target,
                attempts=routed.attempts,
                connecting=routed.upstream,
                setup=setup,
                summary_usage=summary.usage,
                done=summary.done,
                error=summary.error,
                client_gone=state.client_gone,
                rescued_from=routed.rescued_from,
            )

        streams = self.gateway.streams
        streams.add(routed)
        try:
            await relay_to_client(routed, watch, send, finished, headers)
        finally:
            streams.discard(routed)


def _limit_headers(admission: Admission | None, now: float) -> list[tuple[bytes, bytes]]:
    if admission is None or not admission.checks:
        return []
    return rate_headers(admission.used, admission.checks, now)
