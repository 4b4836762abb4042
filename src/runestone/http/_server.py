"""uvicorn's HTTP protocol, bounded against unauthenticated clients.

``runestone serve`` runs uvicorn with this protocol, which bounds what a client can make
the server hold before any application code (and so before authentication) runs, with
the limits of ``EdgeLimits`` (``RUNESTONE_*``, read by ``runestone.config``):

- connections: at most ``max_connections`` per process (default: half the descriptor
  limit, which start-up raises to its hard maximum). At the cap a new connection closes
  the one that has been idle longest (no request in progress), so a stranger holding
  every connection locks no one out; with none idle it is refused with ``503``. A
  connection that never sends a byte is closed after ``idle_timeout`` (10 s); an idle
  keep-alive connection is uvicorn's own ``timeout_keep_alive`` (5 s);
- request line and headers: ``max_header_bytes`` (64 KiB) however they arrive, and
  ``max_headers`` (100), else ``431``; sent within ``header_timeout`` (10 s) of their
  first byte, else ``408``; two ``Authorization`` (or ``x-api-key``) headers, or on
  HTTP/1.1 no ``Host`` or two: ``400``. Every refusal closes the connection;
- the body: ``body_timeout`` (30 s) without a byte closes the connection; its chunked
  framing (sizes, extensions) may take 64 KiB and 64 bytes a chunk, else ``400``;
- pipelining: one request is read ahead of its response at most. Bytes after it wait
  unparsed (reading pauses past 64 KiB of them) until the response is sent. A client
  that packs more requests into one read gets the first two answered and the
  connection closed (RFC 9112 9.3.2: a client retries what a closed connection left
  unanswered): what the server holds for a connection stays bounded.
"""

from __future__ import annotations

import asyncio
import resource
import weakref
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from runestone.config import EdgeLimits

_LIMITS = EdgeLimits()
#: Pipelined bytes held unparsed before reading pauses.
READ_AHEAD = 64 * 1024
#: Chunked framing a body may take besides its data: sizes and extensions.
FRAMING_BYTES = 64 * 1024
FRAMING_PER_CHUNK = 64


def configure(limits: EdgeLimits) -> None:
    """The limits of this process's connections (``runestone serve`` sets them)."""
    global _LIMITS
    _LIMITS = limits


def connection_cap(limits: EdgeLimits) -> int:
    """``max_connections``, or half the descriptor limit (raised to its maximum first):
    the rest is for upstream connections, the state file and the alias watcher."""
    if limits.max_connections:
        return limits.max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return max(16, soft // 2)


#: How long a refused connection's input is still read (and dropped) before it closes.
LINGER_SECONDS = 2.0


def _reply(status: bytes, reason: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain\r\nconnection: close\r\n"
        b"content-length: " + str(len(reason)).encode() + b"\r\n\r\n" + reason
    )


_SWEEP_SECONDS = 0.25


class _Loop:
    """What the connections of one event loop share: one sweep timer for every deadline
    (a request only writes when its clock started), and the idle ones, oldest first."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.cap = connection_cap(_LIMITS)
        self.watched: weakref.WeakSet[BoundedHttpToolsProtocol] = weakref.WeakSet()
        self.idle: dict[BoundedHttpToolsProtocol, None] = {}  # in the order they went idle
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def add(self, protocol: BoundedHttpToolsProtocol) -> None:
        self.watched.add(protocol)
        if self._handle is None:
            self._due = self.loop.time() + _SWEEP_SECONDS
            self._handle = self.loop.call_at(self._due, self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        # A sweep that runs late ran after a busy loop, whose reads may be waiting in the
        # sockets' buffers: nothing is judged too slow until they have been read.
        if now - self._due < _SWEEP_SECONDS:
            for protocol in list(self.watched):
                deadline = protocol.deadline()
                if deadline is not None and now > deadline:
                    protocol.too_slow()
        self._due = now + _SWEEP_SECONDS
        self._handle = self.loop.call_at(self._due, self._sweep) if self.watched else None

    def oldest_idle(self) -> BoundedHttpToolsProtocol | None:
        return next(iter(self.idle), None)


_LOOPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Loop] = weakref.WeakKeyDictionary()

_IDLE, _HEADERS, _BODY = "idle", "headers", "body"


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds of the module docstring.

    A request in progress notes only when its phase's clock started (``_since``): its
    deadline is worked out by the sweep, four times a second, not on every read.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = _LIMITS
        self._phase = _IDLE  # idle -> headers -> body -> idle
        self._header_bytes = 0
        self._since = 0.0  # idle: when it went idle; headers: their first byte; body: last read
        self._refused = False
        self._spoke = False
        # Made by the server before its connection is: no deadline until it is.
        self._connected = False
        self._clock = self.loop.time
        # Requests read whole whose response has not been sent; bytes waiting behind them.
        self._awaiting: list[RequestResponseCycle] = []
        self._held: bytearray | None = None
        self._paused = False
        self._packed = False  # more requests in one read than are read ahead: ignored
        self._wire = self._body = self._chunks = 0  # the body's framing, bounded
        shared = _LOOPS.get(self.loop)
        if shared is None:
            shared = _LOOPS[self.loop] = _Loop(self.loop)
        self._shared = shared
        shared.add(self)

    # --- connections and deadlines --------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._since = self._clock()
        self._connected = True
        shared = self._shared
        if len(self.connections) > shared.cap:
            victim = shared.oldest_idle()
            if victim is None:  # every connection is busy: this one is turned away
                self._refused = True
                transport.write(_reply(b"503 Service Unavailable", b"too many connections"))
                transport.close()
                return
            victim.evict()
        shared.idle[self] = None

    def evict(self) -> None:
        """Close this idle connection: a new one needs its place."""
        self._shared.idle.pop(self, None)
        self._refused = True
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._phase = _IDLE
        self._shared.idle.pop(self, None)
        super().connection_lost(exc)

    def deadline(self) -> float | None:
        """When the request in progress must have made progress by (loop time), or None."""
        phase = self._phase
        if phase is _HEADERS:
            return self._since + self._limits.header_timeout
        if phase is _BODY:
            return self._since + self._limits.body_timeout
        if not self._spoke and not self._refused and self._connected:
            return self._since + self._limits.idle_timeout  # it has never sent a byte
        return None

    def too_slow(self) -> None:
        phase, self._phase = self._phase, _IDLE
        self._refused = True
        self._shared.idle.pop(self, None)
        if not self.transport.is_closing():
            if phase is _HEADERS:
                self.transport.write(_reply(b"408 Request Timeout", b"headers too slow"))
            self.transport.close()

    def _refuse(self, status: bytes, reason: bytes) -> None:
        self._phase = _IDLE
        self._refused = True
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(_reply(status, reason))
        # A lingering close: the refusal goes out with our end shut, and what the client
        # is still sending is read and dropped for a moment. Closing at once, with its
        # bytes unread, would reset the connection, and a reset can discard the refusal
        # before the client reads it.
        if transport.can_write_eof():
            transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, transport.close)
        else:
            transport.close()

    # --- reading --------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused or self._packed:
            return  # nothing more is parsed or held
        if self._awaiting:  # a whole request waits for its response: hold what follows
            held = self._held
            if held is None:
                held = self._held = bytearray()
            held += data
            if len(held) > READ_AHEAD and not self._paused:
                self._paused = True
                self.transport.pause_reading()
            return
        phase = self._phase
        if phase is _BODY:  # the body is still coming: its clock starts again
            self._since = self._clock()
            self._wire += len(data)
        elif phase is _IDLE:  # the first bytes of a request: headers must come in time
            self._phase = _HEADERS
            self._header_bytes = self._wire = len(data)
            self._since = self._clock()
            self._spoke = True
            self._shared.idle.pop(self, None)
        else:
            # Counted as they arrive: the parser holds an unfinished header itself, so
            # waiting for its callbacks would let one huge header fill memory.
            self._header_bytes += len(data)
            self._wire += len(data)
        HttpToolsProtocol.data_received(self, data)
        phase = self._phase
        limits = self._limits
        if phase is _HEADERS and self._header_bytes > limits.max_header_bytes:
            self._refuse(b"431 Request Header Fields Too Large", b"request headers too large")
        elif phase is _BODY and self._wire - self._body > (
            limits.max_header_bytes + FRAMING_BYTES + FRAMING_PER_CHUNK * self._chunks
        ):  # what came besides the body: headers (bounded), then chunk sizes, extensions
            self._refuse(b"400 Bad Request", b"chunked framing too large")

    def on_message_begin(self) -> None:
        if self._refused:
            return
        if len(self._awaiting) >= 2:  # a third request in one read: not read ahead
            self._packed = True
            self._awaiting[-1].keep_alive = False  # closed once the last is answered
            # What the parser still reports of this read goes nowhere (not to the scope
            # of the request read ahead, whose headers these containers were).
            self.url, self.headers = b"", []
            return
        self._body = self._chunks = 0
        HttpToolsProtocol.on_message_begin(self)

    def on_headers_complete(self) -> None:
        if self._refused or self._packed:
            return
        problem = self._check_headers()
        if problem is not None:
            self._refuse(*problem)
            return
        self._phase = _BODY
        self._since = self._clock()  # the body must keep coming
        HttpToolsProtocol.on_headers_complete(self)

    def _check_headers(self) -> tuple[bytes, bytes] | None:
        headers = self.headers
        if len(headers) > self._limits.max_headers:  # their bytes were bounded already
            return b"431 Request Header Fields Too Large", b"too many request headers"
        if self._header_bytes > self._limits.max_header_bytes:
            # Headers and body came in one read: measure the headers themselves.
            size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in headers)
            if size > self._limits.max_header_bytes:
                return b"431 Request Header Fields Too Large", b"request headers too large"
        hosts = credentials = keys = 0
        for name, _ in headers:
            if name == b"host":
                hosts += 1
            elif name == b"authorization":
                credentials += 1
            elif name == b"x-api-key":
                keys += 1
        if credentials > 1 or keys > 1:
            return b"400 Bad Request", b"more than one set of credentials"
        if hosts > 1 or (hosts == 0 and self.parser.get_http_version() == "1.1"):
            return b"400 Bad Request", b"an HTTP/1.1 request needs exactly one Host header"
        return None

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_body(self, body: bytes) -> None:
        if self._packed:
            return
        self._body += len(body)
        HttpToolsProtocol.on_body(self, body)

    def on_message_complete(self) -> None:
        if self._refused or self._packed:
            return
        self._phase = _IDLE
        HttpToolsProtocol.on_message_complete(self)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            self._awaiting.append(cycle)

    def on_response_complete(self) -> None:
        HttpToolsProtocol.on_response_complete(self)
        awaiting = self._awaiting
        while awaiting and awaiting[0].response_complete:  # answered in order
            del awaiting[0]
        if awaiting or self.transport.is_closing():
            return
        self._since = self._clock()
        self._shared.idle[self] = None
        held, self._held = self._held, None
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        if held:
            self.data_received(bytes(held))
