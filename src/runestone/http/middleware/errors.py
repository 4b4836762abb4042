"""The outermost middleware: a request id for every request, and errors rendered once.

A ``GatewayError`` raised anywhere inside becomes the error envelope, in the shape of
the protocol the route declared (``scope["runestone.protocol"]``); any other exception
is logged and becomes ``internal_error``. As in starlette's ``ServerErrorMiddleware``,
once the response has started nothing can be rendered any more: the error is logged
and the connection left to close, since a second response would corrupt the first.

An error no request trace counted (one refused before an endpoint ran: a missing key, an
unknown path, a wrong method) is handed to ``on_uncounted``, so that every refusal shows
in the metrics, the request log and the console like any other failed request.

Whether it started is ``scope["runestone.started"]``: set by the gateway's own streamed
responses (the only ones of its own that can fail after starting), and by a guard on
``send`` that the dispatcher puts in front of mounted applications. Not a wrapper on
every ``send``: that would cost a call on every streamed chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from runestone.errors import GatewayError, drop_tracebacks, error_for
from runestone.http._asgi import ASGIApp, ClientGone, Message, Receive, Scope, Send, send_error
from runestone.routing import new_request_id

log = logging.getLogger("runestone.http")

REQUEST_ID = "runestone.request_id"
PROTOCOL = "runestone.protocol"
STARTED = "runestone.started"
#: Set by an endpoint whose request a trace counts (whatever its outcome).
COUNTED = "runestone.counted"

#: Hears of an error that no trace counted: (scope, request id, the error).
Uncounted = Callable[[Scope, str, GatewayError], None]


def _ignore(scope: Scope, request_id: str, error: GatewayError) -> None:
    return None


def guard_start(scope: Scope, send: Send) -> Send:
    """``send``, noting in the scope when the response starts (for foreign apps)."""

    async def guarded(message: Message) -> None:
        if message["type"] == "http.response.start":
            scope[STARTED] = True
        await send(message)

    return guarded


class ErrorMiddleware:
    def __init__(self, app: ASGIApp, on_uncounted: Uncounted = _ignore) -> None:
        self.app = app
        self.on_uncounted = on_uncounted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                client_id = value.decode("latin-1")
                break
        request_id = scope[REQUEST_ID] = new_request_id(client_id)
        try:
            await self.app(scope, receive, send)
        except ClientGone as exc:
            drop_tracebacks(exc)
            return
        except GatewayError as exc:
            drop_tracebacks(exc)
            if COUNTED not in scope:
                self.on_uncounted(scope, request_id, exc)
            if scope.get(STARTED):
                log.warning("request %s failed after its response started: %r", request_id, exc)
                return
            protocol = scope.get(PROTOCOL)
            await send_error(send, exc, request_id, protocol.error_body if protocol else None)
        except Exception as exc:
            log.exception("unhandled error in request %s", request_id)
            drop_tracebacks(exc)
            if scope.get(STARTED):
                return
            error = error_for("internal_error", "the gateway failed to handle the request")
            if COUNTED not in scope:
                self.on_uncounted(scope, request_id, error)
            protocol = scope.get(PROTOCOL)
            await send_error(send, error, request_id, protocol.error_body if protocol else None)
