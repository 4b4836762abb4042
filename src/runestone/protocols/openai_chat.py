"""OpenAI chat completions: the request check, the stream scanner and the error shapes.

Streams are ``data: {...}`` chunks ending with ``data: [DONE]``; a failure after the
stream started ends it with ``data: {"error": {...envelope...}}`` and no ``[DONE]``.
Errors use the gateway's own envelope, which is OpenAI's with a few fields more.
"""

from __future__ import annotations

from collections.abc import Mapping

from runestone.errors import GatewayError
from runestone.protocols._base import ClientProtocol, require_messages, require_model
from runestone.providers.errors import map_stream_error_event
from runestone.streams.sse import (
    DONE_EVENT,
    StreamScanner,
    encode,
    event_data,
    loads_object,
    split_events,
)

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
_FINAL_BYTES = 4096  # how far before [DONE] usage and the finish reason are looked for
_DONE_PREFIXES = (b"data: ", b"data:")
_USAGE_MARKERS = (b'"usage":{', b'"usage": {')
_FINISH_MARKERS = (b'"finish_reason":"', b'"finish_reason": "')
_TEXT_MARKERS = (b'"content":"', b'"content": "', b'"refusal":"', b'"refusal": "')
_NO_TEXT = (b'"', b"")  # an empty string, or a read that ends before the text does


def validate_chat(body: object) -> dict[str, object]:
    """A chat-completions body (the library calls use this directly)."""
    return require_messages(require_model(body))


def asked_for_usage(body: Mapping[str, object]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def _adds_usage(body: Mapping[str, object]) -> bool:
    # Providers that accept it (a flag on their row) are asked for usage on every
    # stream; the scanner hides the usage chunk from a client that did not ask.
    return not asked_for_usage(body)


def error_json(error: GatewayError, request_id: str | None) -> bytes:
    return error.to_json(request_id)


class OpenAIStreamScanner(StreamScanner):
    """Chat-completions streams: ``data: {...}`` chunks ending with ``data: [DONE]``."""

    __slots__ = ("_earlier", "_previous", "hide_usage")

    END_MARKER = "[DONE]"
    # A tool-call delta, a finish, the end; text and refusals are ``_TEXT_MARKERS``.
    CONTENT_MARKERS = (b'"tool_calls"', *_FINISH_MARKERS, b"[DONE]")

    def __init__(self, provider: str, *, hide_usage: bool = False) -> None:
        super().__init__(provider)
        # The gateway asked for usage the client did not: drop the usage-only chunk.
        self.hide_usage = hide_usage
        # The two blocks before this one: the finish reason and usage events arrive just
        # before [DONE], sometimes in reads of their own.
        self._earlier = self._previous = b""

    def error_event(self, error: GatewayError, request_id: str | None) -> bytes:
        return encode(error.to_json(request_id))

    def has_content(self, data: bytes) -> bool:
        # Text or a refusal counts once it is not empty: the first chunk's
        # ``"content":""`` (with the role) is not content yet.
        for marker in _TEXT_MARKERS:
            at = data.find(marker)
            while at >= 0:
                at += len(marker)
                if data[at : at + 1] not in _NO_TEXT:
                    return True
                at = data.find(marker, at)
        return super().has_content(data)

    def _scan(self, complete: bytes) -> bytes:
        # Every search runs backwards: bytes.rfind is about three times faster than a
        # forward search on a miss, and what the end of a stream carries (usage, the
        # finish reason, [DONE]) is found at once. A whole answer in one read costs a
        # few passes over it, no decoding of its content events.
        if self.hide_usage and (
            complete.rfind(b'"usage":{') >= 0 or complete.rfind(b'"usage": {') >= 0
        ):
            complete = self._take_usage(complete)
        if complete.rfind(b'"error"') >= 0:
            return self._inspect(complete)
        if complete.rfind(b"[DONE]") >= 0:
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

    def _completed_without_marker(self) -> bool:
        # Some OpenAI-compatible servers omit data: [DONE]. A body that ended cleanly after
        # a chunk with a finish reason holds the whole answer: end it as OpenAI would.
        self._read_final_events((self._earlier[-_FINAL_BYTES:] + self._previous)[-_FINAL_BYTES:])
        if self.summary.finish_reason is None:
            return False
        self.added_end = DONE_EVENT
        return True

    def _take_usage(self, complete: bytes) -> bytes:
        """Drop the usage-only chunk (the client did not ask for it), keeping its usage.

        Found by byte search and decoded alone: a read holding the whole stream (an
        upstream that writes everything at once) costs one decode, not one per event.
        """
        if b"\r" in complete:
            return self._take_usage_by_event(complete)
        for marker in _USAGE_MARKERS:
            at = complete.rfind(marker)
            while at >= 0:
                start, end = _event_around(complete, at)
                payload = loads_object(event_data(complete[start:end]) or b"")
                if (
                    payload is not None
                    and isinstance(payload.get("usage"), dict)
                    and not payload.get("choices")
                ):
                    self.summary.usage = payload["usage"]  # type: ignore[assignment]
                    # A stream has one usage chunk, its last: the rest of the read is
                    # not searched again (a whole answer in one read is 10 KB and more).
                    return complete[:start] + complete[end:]
                at = complete.rfind(marker, 0, start)
        return complete

    def _take_usage_by_event(self, complete: bytes) -> bytes:
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
        """Usage and finish reason, each from the last event before [DONE] that has it."""
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        wanted = (_FINISH_MARKERS,) if self.summary.usage else (_USAGE_MARKERS, _FINISH_MARKERS)
        for markers in wanted:
            for marker in markers:
                if self._note_last(data, marker):
                    break  # one spelling per upstream

    def _note_last(self, data: bytes, marker: bytes) -> bool:
        """Note the last event of ``data`` with ``marker`` that carries usage or a finish."""
        at = data.rfind(marker)
        while at >= 0:
            start, end = _event_around(data, at)
            payload = loads_object(event_data(data[start:end]) or b"")
            if payload is not None and self._note(payload):
                return True
            at = data.rfind(marker, 0, start)
        return False

    def _note(self, payload: dict[str, object]) -> bool:
        """Keep the usage and finish reason ``payload`` carries; whether it had either."""
        found = False
        usage = payload.get("usage")
        if isinstance(usage, dict):
            self.summary.usage = usage
            found = True
        choices = payload.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict) and isinstance(choice.get("finish_reason"), str):
                    self.summary.finish_reason = choice["finish_reason"]
                    found = True
        return found

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
    """Index just past the first ``data: [DONE]`` event that starts a line, or 0."""
    found = 0
    at = data.rfind(b"[DONE]")
    while at >= 0:
        line = data.rfind(b"\n", 0, at) + 1
        if data[line:at] in _DONE_PREFIXES:
            end = data.find(b"\n\n", at)
            crlf = data.find(b"\r\n\r\n", at)
            if crlf >= 0 and (end < 0 or crlf < end):
                found = crlf + 4
            else:
                found = end + 2 if end >= 0 else 0  # not yet ended: wait for its end
        at = data.rfind(b"[DONE]", 0, line)
    return found


def _event_around(data: bytes, at: int) -> tuple[int, int]:
    """Where the event holding index ``at`` of LF-framed ``data`` starts and ends."""
    start = data.rfind(b"\n\n", 0, at)
    end = data.find(b"\n\n", at)
    return (0 if start < 0 else start + 2), (len(data) if end < 0 else end + 2)


def _has_marker(event: bytes) -> bool:
    for marker in _MARKERS:  # noqa: SIM110  (a plain loop is twice as fast as any() here)
        if marker in event:
            return True
    return False


def _scanner(provider: str, hide_usage: bool) -> StreamScanner:
    return OpenAIStreamScanner(provider, hide_usage=hide_usage)


CHAT = ClientProtocol(
    operation="chat",
    title="chat completions",
    validate=validate_chat,
    error_body=error_json,
    scanner=_scanner,
    add_stream_usage=_adds_usage,
)
