"""The one SSE codec: ``EventReader`` cuts a byte stream at event boundaries, ``encode``
writes an event; ``event_data`` and ``split_events`` read events already cut.

Every path that reads an upstream's events reads them with ``EventReader``: linear in the
bytes read (a partial event is held as the reads that brought it, joined once), and no
event longer than ``limit`` (``RUNESTONE_MAX_EVENT_BYTES``), past which the upstream's
answer is ``upstream_invalid_response``. The pass-through scanners, the translated
streams, the Responses bridge and the library's ``route_stream`` all do.

``StreamScanner`` is the base of every protocol's stream scanner (``runestone.protocols``):
bytes are relayed unchanged, cut only at event boundaries so that an event split across
network reads goes out whole; a subclass looks inside an event only when a cheap byte
search says it may matter (an error, usage, the end marker), so a content chunk costs a
few substring searches and no JSON parsing.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import orjson

from runestone.errors import GatewayError, error_for

SSE_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
)
DONE_EVENT = b"data: [DONE]\n\n"
MAX_EVENT_BYTES = 4 * 1024 * 1024
HEARTBEAT = b": keep-alive\n\n"


@dataclass(slots=True)
class StreamSummary:
    """What the gateway learned from a stream it relayed, for usage and telemetry."""

    done: bool = False
    usage: dict[str, object] | None = None
    finish_reason: str | None = None
    error: GatewayError | None = None
    #: The whole answer, where the protocol's last event carries it (Responses).
    final: dict[str, object] | None = None


def _last_boundary(data: bytes) -> int:
    """Index just past the last complete event in ``data``, or 0 when there is none."""
    lf = data.rfind(b"\n\n")
    if b"\r" not in data:  # memchr: far cheaper than a search for CRLF CRLF that misses
        return lf + 2 if lf >= 0 else 0
    crlf = data.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


_EVENT_END = re.compile(rb"(\r\n\r\n|\n\n)")


def split_events(data: bytes) -> list[bytes]:
    """Complete events, each with its own terminating blank line, bytes unchanged."""
    if b"\r" not in data:
        parts = data.split(b"\n\n")
        return [part + b"\n\n" for part in parts[:-1]]
    parts = _EVENT_END.split(data)
    return [parts[i] + parts[i + 1] for i in range(0, len(parts) - 1, 2)]


def encode(data: bytes, kind: str | None = None) -> bytes:
    """One event: its ``event:`` line if it has a type, its data line, the blank line.

    ``data`` is one line (JSON holds no raw line breaks).
    """
    if kind is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


class EventReader:
    """Cuts a byte stream into whole events, as the reads arrive.

    ``feed`` returns the events a read completes (several, one, or none: ``b""``) with
    their blank lines, bytes unchanged, and holds a partial one; ``rest`` is what is held
    when the stream ends. An event past ``limit`` bytes raises ``GatewayError``
    (``upstream_invalid_response``, naming ``source``) and what was held is let go.
    """

    __slots__ = ("_pending", "_pending_size", "limit", "source")

    def __init__(self, source: str, *, limit: int = MAX_EVENT_BYTES) -> None:
        self.source = source
        self.limit = limit
        # The start of an event not yet complete, as the reads that brought it: joined
        # once when its end arrives, so a long event costs linear time, not quadratic.
        self._pending: list[bytes] = []
        self._pending_size = 0

    @property
    def holding(self) -> bool:
        return bool(self._pending)

    def feed(self, data: bytes) -> bytes:
        if self._pending:
            # Only this read can hold the end: search it, and the few bytes before it in
            # which a CRLF CRLF could have begun.
            seam = b"".join(self._pending[-3:])[-3:]  # reads may be shorter than 3 bytes
            end = _last_boundary(seam + data)
            if end == 0:
                self._hold(data)
                return b""
            end -= len(seam)
            self._pending.append(data)
            data = b"".join(self._pending)
            end += len(data) - len(self._pending[-1])
            self._pending = []
            self._pending_size = 0
            if end < len(data):
                self._hold(data[end:])
            return data[:end]
        if data.endswith(b"\n\n"):  # the usual case: whole events per read
            return data
        end = _last_boundary(data)
        if end < len(data):
            self._hold(data[end:])
        return data[:end]

    def _hold(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size > self.limit:
            self._pending = []
            self._pending_size = 0
            raise error_for(
                "upstream_invalid_response",
                f"{self.source} sent an SSE event larger than {self.limit} bytes "
                "(RUNESTONE_MAX_EVENT_BYTES)",
                provider=self.source,
            )

    def rest(self) -> bytes:
        """The partial event held at the end of the stream (let go)."""
        rest = b"".join(self._pending)
        self._pending = []
        self._pending_size = 0
        return rest


async def one_event_each(
    chunks: AsyncIterator[bytes], source: str = "runestone", limit: int = MAX_EVENT_BYTES
) -> AsyncIterator[bytes]:
    """Re-cut SSE bytes so that each item is exactly one event (with its blank line).

    Network reads and relayed pieces bundle several events, or split one; a caller that
    handles events one at a time (the library's ``route_stream``) gets them whole.
    """
    reader = EventReader(source, limit=limit)
    async for chunk in chunks:
        complete = reader.feed(chunk)
        if complete:
            for event in split_events(complete):
                yield event
    tail = reader.rest()
    if tail.strip():
        yield tail  # an unterminated last event: never dropped


def event_data(event: bytes) -> bytes | None:
    # The usual event is one data line: its first line break is the one that ends it.
    if (
        event.startswith(b"data:")
        and event.find(b"\n") == len(event) - 2
        and event[-1:] == b"\n"
        and b"\r" not in event
    ):
        return event[5:-2].lstrip(b" ")
    lines = [
        line[5:].lstrip(b" ")
        for line in event.replace(b"\r\n", b"\n").split(b"\n")
        if line.startswith(b"data:")
    ]
    return b"\n".join(lines) if lines else None


class StreamScanner:
    """Cuts an SSE byte stream at event boundaries; subclasses read their protocol's events.

    ``feed`` returns the complete events to relay now and keeps a partial event for
    later. After an in-band error event it returns the events before it and sets
    ``summary.error``; the caller must then end the stream with ``error_event``.
    """

    __slots__ = ("_reader", "added_end", "provider", "summary")

    #: How a clean end looks, for the message when a stream ends without it.
    END_MARKER = ""
    #: What counts as the first content: until one of these arrives, a stream may still
    #: fail over. Literal bytes: a test with ``in`` runs at memchr speed, where a regex
    #: tries every position of a read (a whole answer in one read is 10 KB and more).
    CONTENT_MARKERS: tuple[bytes, ...] = ()

    def __init__(self, provider: str, *, limit: int = MAX_EVENT_BYTES) -> None:
        self.provider = provider
        self.summary = StreamSummary()
        # An upstream that never ends an event must not grow the gateway's memory (or
        # its time) without bound: the reader stops at ``limit``.
        self._reader = EventReader(provider, limit=limit)
        #: The end marker the gateway adds to a stream that completed without its own.
        self.added_end = b""

    @property
    def limit(self) -> int:
        """The most bytes one event may take."""
        return self._reader.limit

    @limit.setter
    def limit(self, value: int) -> None:
        self._reader.limit = value

    def has_content(self, data: bytes) -> bool:
        """Whether ``data`` (complete events) holds the stream's first content."""
        for marker in self.CONTENT_MARKERS:  # noqa: SIM110  (any() is slower here)
            if marker in data:
                return True
        return False

    def feed(self, data: bytes) -> bytes:
        summary = self.summary
        if summary.error is not None:
            return b""  # the stream is over: nothing more is held or scanned
        reader = self._reader
        # The reader's own first test, made here: most reads are whole events.
        if reader.holding or not data.endswith(b"\n\n"):
            try:
                data = reader.feed(data)
            except GatewayError as exc:
                summary.error = exc
                return b""
            if not data:
                return b""
        if summary.done:
            return b""  # nothing after the end of the answer is part of it
        return self._scan(data)

    def _scan(self, complete: bytes) -> bytes:
        raise NotImplementedError

    @staticmethod
    def _payloads(
        complete: bytes, markers: tuple[bytes, ...]
    ) -> Iterator[tuple[int, int, dict[str, object]]]:
        """(start, end, decoded data) of each complete event that holds one of ``markers``
        and whose data is a JSON object: a read that holds a whole answer decodes only the
        few events that can matter, not every delta."""
        end = 0
        for event in split_events(complete):
            start, end = end, end + len(event)
            for marker in markers:
                if marker in event:
                    payload = loads_object(event_data(event) or b"")
                    if payload is not None:
                        yield start, end, payload
                    break

    def _completed_without_marker(self) -> bool:
        """Whether a stream that ended without its end marker is complete all the same
        (and ``added_end`` says how to end it); by default it is not."""
        return False

    def error_event(self, error: GatewayError, request_id: str | None) -> bytes:
        """The in-band event that ends a stream which already started, in this protocol."""
        raise NotImplementedError

    def finish(self) -> GatewayError | None:
        """At upstream end of stream: the error to end with, or None if it completed."""
        if self.summary.error is not None or self.summary.done:
            return self.summary.error
        held = self._reader.rest()
        if not held and self._completed_without_marker():
            self.summary.done = True
            return None
        detail = "in the middle of an event" if held.strip() else f"without {self.END_MARKER}"
        self.summary.error = error_for(
            "upstream_stream_interrupted",
            f"{self.provider} ended the stream {detail}; the answer is incomplete",
            provider=self.provider,
        )
        return self.summary.error


def loads_object(data: bytes) -> dict[str, object] | None:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
