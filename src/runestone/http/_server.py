"""uvicorn's HTTP protocol, bounded against unauthenticated clients.

``runestone serve`` runs uvicorn with this protocol, which limits what a client can
make the server hold before any application code (and so before authentication) runs:

- request line and headers: at most ``RUNESTONE_MAX_HEADER_BYTES`` (64 KiB) and
  ``RUNESTONE_MAX_HEADERS`` (100), else ``431`` and the connection closes;
- time to send them: ``RUNESTONE_HEADER_TIMEOUT`` (10 s) from the first byte of a
  request, else ``408`` and close (slowloris);
- a body that stops arriving: ``RUNESTONE_BODY_TIMEOUT`` (30 s) without a byte, else the
  connection closes.

An idle keep-alive connection is uvicorn's own ``timeout_keep_alive`` (5 s).
"""

from __future__ import annotations

import asyncio
import os
import weakref
from functools import cache
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


@cache
def _limits() -> tuple[int, int, float, float]:
    env = os.environ
    return (
        int(env.get("RUNESTONE_MAX_HEADER_BYTES") or 64 * 1024),
        int(env.get("RUNESTONE_MAX_HEADERS") or 100),
        float(env.get("RUNESTONE_HEADER_TIMEOUT") or 10.0),
        float(env.get("RUNESTONE_BODY_TIMEOUT") or 30.0),
    )


def _reply(status: bytes, reason: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain\r\nconnection: close\r\n"
        b"content-length: " + str(len(reason)).encode() + b"\r\n\r\n" + reason
    )


_SWEEP_SECONDS = 0.25


class _Sweeper:
    """One timer for every connection of a loop: a request only writes its deadline.

    A timer per request phase (three per request) cost more than the rest of the
    protocol's work; a sweep four times a second costs nothing per request.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.watched: weakref.WeakSet[BoundedHttpToolsProtocol] = weakref.WeakSet()
        self._handle: asyncio.TimerHandle | None = None

    def add(self, protocol: BoundedHttpToolsProtocol) -> None:
        self.watched.add(protocol)
        if self._handle is None:
            self._handle = self.loop.call_later(_SWEEP_SECONDS, self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        for protocol in list(self.watched):
            deadline = protocol.deadline()
            if deadline is not None and now > deadline:
                protocol.too_slow()
        self._handle = self.loop.call_later(_SWEEP_SECONDS, self._sweep) if self.watched else None


_SWEEPERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Sweeper] = (
    weakref.WeakKeyDictionary()
)


_IDLE, _HEADERS, _BODY = "idle", "headers", "body"


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header limits and read timeouts.

    A request in progress notes only when its phase's clock started (``_since``): its
    deadline is worked out by the sweep, four times a second, not on every read.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_bytes, self._max_headers, self._header_timeout, self._body_timeout = _limits()
        self._phase = _IDLE  # idle -> headers -> body -> idle
        self._header_bytes = 0
        self._since = 0.0  # headers: their first byte; body: the last read
        self._refused = False
        self._clock = self.loop.time
        sweeper = _SWEEPERS.get(self.loop)
        if sweeper is None:
            sweeper = _SWEEPERS[self.loop] = _Sweeper(self.loop)
        sweeper.add(self)

    def deadline(self) -> float | None:
        """When the request in progress must have made progress by (loop time), or None."""
        if self._phase is _HEADERS:
            return self._since + self._header_timeout
        if self._phase is _BODY:
            return self._since + self._body_timeout
        return None

    def too_slow(self) -> None:
        phase, self._phase = self._phase, _IDLE
        self._refused = True
        if not self.transport.is_closing():
            if phase is _HEADERS:
                self.transport.write(_reply(b"408 Request Timeout", b"headers too slow"))
            self.transport.close()

    def _refuse(self, reason: bytes) -> None:
        self._phase = _IDLE
        self._refused = True
        if not self.transport.is_closing():
            self.transport.write(_reply(b"431 Request Header Fields Too Large", reason))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._phase = _IDLE
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # nothing more is parsed or held
        phase = self._phase
        if phase is _BODY:  # the body is still coming: its clock starts again
            self._since = self._clock()
        elif phase is _IDLE:  # the first bytes of a request: headers must come in time
            self._phase = _HEADERS
            self._header_bytes = len(data)
            self._since = self._clock()
        else:
            # Counted as they arrive: the parser holds an unfinished header itself, so
            # waiting for its callbacks would let one huge header fill memory.
            self._header_bytes += len(data)
        HttpToolsProtocol.data_received(self, data)
        if self._phase is _HEADERS and self._header_bytes > self._max_bytes:
            self._refuse(b"request headers too large")

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        if len(self.headers) > self._max_headers:  # their bytes were bounded already
            self._refuse(b"too many request headers")
            return
        self._phase = _BODY
        self._since = self._clock()  # the body must keep coming
        HttpToolsProtocol.on_headers_complete(self)

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        HttpToolsProtocol.on_message_complete(self)
