"""The SSE relay: upstream bytes out as they arrive, with honest stream endings.

Bytes are relayed unchanged, cut only at event boundaries so that an event split across
network reads goes out whole. The relay looks inside an event only when a cheap byte
search says it may matter (an error, the usage block, the end marker), so a content
chunk costs a few substring searches and no JSON parsing.

How a stream ends:

- upstream sent ``data: [DONE]``: relayed; the stream is complete;
- upstream sent an in-band error event, broke off, or closed without ``[DONE]``: the
  client gets ``data: {"error": {...envelope...}}`` and no ``[DONE]``, so that a
  truncated answer is never presented as a complete one.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

import orjson

from runestone.errors import GatewayError, error_for
from runestone.upstream_errors import map_stream_error_event, map_transport_error

SSE_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
)
DONE_EVENT = b"data: [DONE]\n\n"
HEARTBEAT = b": keep-alive\n\n"

# Markers of events worth parsing. Only "error" and "[DONE]" are searched in every block;
# usage and finish reason come in the last events, read once when [DONE] arrives.
_MARKERS = (
    b'"error"',
    b"[DONE]",
    b'"usage":{',
    b'"usage": {',
    b'"finish_reason":"',
    b'"finish_reason": "',
)
_FINAL_EVENTS = 6  # how many events before [DONE] may carry usage or the finish reason
_FINAL_BYTES = 4096  # and how far back they can be
_DONE_LINES = (b"data: [DONE]", b"data:[DONE]")


@dataclass(slots=True)
class StreamSummary:
    """What the gateway learned from a stream it relayed, for usage and telemetry."""

    done: bool = False
    usage: dict[str, object] | None = None
    finish_reason: str | None = None
    error: GatewayError | None = None


def _last_boundary(data: bytes) -> int:
    """Index just past the last complete event in ``data``, or 0 when there is none."""
    lf = data.rfind(b"\n\n")
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


def event_data(event: bytes) -> bytes | None:
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

    __slots__ = ("_tail", "provider", "summary")

    #: How a clean end looks, for the message when a stream ends without it.
    END_MARKER = ""
    #: What counts as the first content: until it arrives, a stream may still fail over.
    FIRST_CONTENT: re.Pattern[bytes] = re.compile(rb"(?!)")

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.summary = StreamSummary()
        self._tail = b""

    def feed(self, data: bytes) -> bytes:
        if self._tail:
            data = self._tail + data
            self._tail = b""
        if data.endswith(b"\n\n"):  # the usual case: whole events per read
            complete = data
        else:
            end = _last_boundary(data)
            if end == 0:
                self._tail = data
                return b""
            complete, self._tail = data[:end], data[end:]
        if self.summary.done:
            return b""  # nothing after the end of the answer is part of it
        return self._scan(complete)

    def _scan(self, complete: bytes) -> bytes:
        raise NotImplementedError

    def error_event(self, error: GatewayError, request_id: str | None) -> bytes:
        """The in-band event that ends a stream which already started, in this protocol."""
        raise NotImplementedError

    def finish(self) -> GatewayError | None:
        """At upstream end of stream: the error to end with, or None if it completed."""
        if self.summary.error is not None or self.summary.done:
            return self.summary.error
        detail = "in the middle of an event" if self._tail.strip() else f"without {self.END_MARKER}"
        self.summary.error = error_for(
            "upstream_stream_interrupted",
            f"{self.provider} ended the stream {detail}; the answer is incomplete",
            provider=self.provider,
        )
        return self.summary.error


class OpenAIStreamScanner(StreamScanner):
    """Chat-completions streams: ``data: {...}`` chunks ending with ``data: [DONE]``."""

    __slots__ = ("_earlier", "_previous", "hide_usage")

    END_MARKER = "[DONE]"
    # Text or tool-call deltas, a refusal, a finish, the end.
    FIRST_CONTENT = re.compile(
        rb'"content": ?"[^"]|"tool_calls"|"finish_reason": ?"|\[DONE\]|"refusal": ?"[^"]'
    )

    def __init__(self, provider: str, *, hide_usage: bool = False) -> None:
        super().__init__(provider)
        # The gateway asked for usage the client did not: drop the usage-only chunk.
        self.hide_usage = hide_usage
        # The two blocks before this one: the finish reason and usage events arrive just
        # before [DONE], sometimes in reads of their own.
        self._earlier = self._previous = b""

    def error_event(self, error: GatewayError, request_id: str | None) -> bytes:
        return error.to_sse(request_id)

    def _scan(self, complete: bytes) -> bytes:
        if self.hide_usage and (b'"usage":{' in complete or b'"usage": {' in complete):
            complete = self._take_usage(complete)
        if b'"error"' in complete:
            return self._inspect(complete)
        if b"[DONE]" in complete:
            end = _done_event_end(complete)
            if end:
                self.summary.done = True
                final = complete[:end]
                if len(final) < _FINAL_BYTES:
                    final = self._earlier[-_FINAL_BYTES:] + self._previous[-_FINAL_BYTES:] + final
                self._read_final_events(final[-_FINAL_BYTES:])
                return complete[:end]
        self._earlier, self._previous = self._previous, complete
        return complete

    def _take_usage(self, complete: bytes) -> bytes:
        kept = []
        for event in split_events(complete):
            payload = loads_object(event_data(event) or b"")
            if (
                payload is not None
                and isinstance(payload.get("usage"), dict)
                and not payload.get("choices")
            ):
                self.summary.usage = payload["usage"]  # type: ignore[assignment]
                continue
            kept.append(event)
        return b"".join(kept)

    def _read_final_events(self, data: bytes) -> None:
        """Usage and finish reason, from the few events that precede [DONE]."""
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        events = data.rsplit(b"\n\n", _FINAL_EVENTS)
        if len(events) > _FINAL_EVENTS:
            events = events[1:]  # the first piece holds everything older, unsplit
        for event in events:
            if not _has_marker(event):
                continue
            payload = loads_object(event_data(event) or b"")
            if payload is not None:
                self._note(payload)

    def _note(self, payload: dict[str, object]) -> None:
        usage = payload.get("usage")
        if isinstance(usage, dict):
            self.summary.usage = usage
        choices = payload.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict) and isinstance(choice.get("finish_reason"), str):
                    self.summary.finish_reason = choice["finish_reason"]

    def _inspect(self, complete: bytes) -> bytes:
        """Read the events that may matter; return what to relay (all, or up to an end)."""
        end = 0
        for event in split_events(complete):
            start, end = end, end + len(event)
            if not _has_marker(event):
                continue
            data = event_data(event)
            if data is None:
                continue
            if data == b"[DONE]":
                self.summary.done = True
                return complete[:end]
            payload = loads_object(data)
            if payload is None:
                continue
            if payload.get("error"):
                self.summary.error = map_stream_error_event(self.provider, payload["error"])
                return complete[:start]
            self._note(payload)
        return complete


def _done_event_end(data: bytes) -> int:
    """Index just past a ``data: [DONE]`` event that starts a line, or 0 if there is none."""
    for line in _DONE_LINES:
        at = data.find(line)
        while at >= 0:
            if at == 0 or data[at - 1] in b"\r\n":
                end = data.find(b"\n\n", at)
                crlf = data.find(b"\r\n\r\n", at)
                if crlf >= 0 and (end < 0 or crlf < end):
                    return crlf + 4
                return end + 2 if end >= 0 else 0
            at = data.find(line, at + 1)
    return 0


def _has_marker(event: bytes) -> bool:
    for marker in _MARKERS:  # noqa: SIM110  (a plain loop is twice as fast as any() here)
        if marker in event:
            return True
    return False


def loads_object(data: bytes) -> dict[str, object] | None:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


async def relay_stream(
    chunks: AsyncIterator[bytes],
    scanner: StreamScanner,
    request_id: str | None,
    first: bytes = b"",
) -> AsyncGenerator[bytes, None]:
    """Yield the SSE bytes a client should receive, ending honestly on any failure.

    ``first`` is output the scanner already produced (read while connecting).
    """
    summary = scanner.summary
    if first:
        yield first
        if summary.done:
            return
    try:
        async for chunk in chunks:
            out = scanner.feed(chunk)
            if out:
                yield out
            if summary.error is not None:
                yield scanner.error_event(summary.error, request_id)
                return
            if summary.done:
                return
    except GatewayError as exc:
        summary.error = summary.error or exc
        yield scanner.error_event(summary.error, request_id)
        return
    except Exception as exc:  # a broken upstream connection, mid-stream
        # An error set already (the deadline passing) is why the connection was cut.
        summary.error = summary.error or map_transport_error(scanner.provider, exc, streaming=True)
        yield scanner.error_event(summary.error, request_id)
        return
    ending = scanner.finish()
    if ending is not None:
        yield scanner.error_event(ending, request_id)
