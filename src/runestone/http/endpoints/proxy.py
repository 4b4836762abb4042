"""The model API endpoints: one ``ProxyEndpoint`` per client protocol.

Reads and checks the body in the route's protocol, hands it to the router, and sends
the answer (JSON) or relays the stream; a ``RequestTrace`` does the accounting.
"""

from __future__ import annotations

import contextlib

from runestone._gateway import Gateway
from runestone._version import __version__
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
from runestone.http._relay import StreamState, relay_to_client
from runestone.http.middleware.errors import REQUEST_ID
from runestone.protocols import ClientProtocol
from runestone.providers import Forwarded
from runestone.routing import RoutedStream, Router
from runestone.telemetry import RequestTrace

_PRODUCT = f"runestone/{__version__}"


class ProxyEndpoint:
    def __init__(self, protocol: ClientProtocol, gateway: Gateway) -> None:
        self.protocol = protocol
        self.gateway = gateway
        self._max_body = gateway.settings.max_body_bytes
        self._heartbeat = gateway.settings.heartbeat_seconds

    def __repr__(self) -> str:
        return f"<ProxyEndpoint {self.protocol.operation}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gateway = self.gateway
        router = gateway.router
        assert router is not None, "the gateway starts before its first request"
        protocol = self.protocol
        request_id: str = scope[REQUEST_ID]
        telemetry = gateway.telemetry
        traceparent = _header(scope, b"traceparent") if telemetry.tracing else None
        trace = RequestTrace(
            telemetry,
            request_id=request_id,
            route=protocol.operation,
            table=gateway.aliases.table,
            traceparent=traceparent,
        )
        stream = False
        escaped: BaseException | None = None
        try:
            body = protocol.validate(await self._read_json(scope, receive))
            trace.model = str(body["model"])
            forward = self._forwarded(scope)
            if protocol.scanner is not None and body.get("stream") is True:
                stream = True
                routed = await router.open_stream(body, request_id, protocol, forward)
                await self._relay(routed, trace, receive, send)
            else:
                await self._answer(router, body, request_id, forward, trace, send)
        except GatewayError as exc:
            trace.failed(exc, stream=stream)
            raise
        except BaseException as exc:
            escaped = exc
            raise
        finally:
            trace.close(escaped)

    def _forwarded(self, scope: Scope) -> Forwarded:
        """The client's headers an upstream of its own format sees, and its query string.

        The client's user-agent goes upstream with Runestone's product token appended,
        so a provider's logs still say which application called.
        """
        wanted = self.protocol.forward_headers
        headers = []
        agent = _PRODUCT
        for name, value in scope["headers"]:
            if name == b"user-agent":
                agent = value.decode("latin-1") + " " + _PRODUCT
            elif name in wanted:
                headers.append((name.decode(), value.decode("latin-1")))
        headers.append(("user-agent", agent))
        query: bytes = scope.get("query_string", b"")
        return Forwarded(tuple(headers), query.decode("latin-1"))

    async def _read_json(self, scope: Scope, receive: Receive) -> object:
        declared: int | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                with contextlib.suppress(ValueError):
                    declared = int(value)
                break
        return parse_json(await read_body(receive, self._max_body, declared))

    async def _answer(
        self,
        router: Router,
        body: dict[str, object],
        request_id: str,
        forward: Forwarded,
        trace: RequestTrace,
        send: Send,
    ) -> None:
        routed = await router.complete(self.protocol, body, request_id, forward)
        reply = routed.reply
        answer = trace.answered(
            target=routed.target,
            attempts=routed.attempts,
            upstream=routed.upstream,
            body=reply.body,
        )
        headers = [
            (b"content-type", reply.content_type),
            (b"x-request-id", request_id.encode()),
            (b"x-runestone-target", header_value(str(routed.target))),
            (b"x-runestone-attempts", str(routed.attempts).encode()),
            (b"x-runestone-overhead-ms", b"%.3f" % answer.overhead_ms),
            (
                b"server-timing",
                b"gateway;dur=%.3f, upstream;dur=%.3f" % (answer.overhead_ms, answer.upstream_ms),
            ),
        ]
        if answer.cost is not None:
            headers.append((b"x-runestone-cost-usd", b"%.8f" % answer.cost))
        await send_json(send, 200, reply.body, headers)

    async def _relay(
        self, routed: RoutedStream, trace: RequestTrace, receive: Receive, send: Send
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
            )

        streams = self.gateway.streams
        streams.add(routed)
        try:
            await relay_to_client(routed, receive, send, self._heartbeat, finished)
        finally:
            streams.discard(routed)


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return str(value.decode("latin-1"))
    return None
