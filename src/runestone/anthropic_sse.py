"""Anthropic Messages streams: ``event: <type>`` / ``data: {...}`` pairs.

A clean stream ends with ``message_stop``; a failure ends with ``event: error`` and no
``message_stop``. Usage comes in ``message_start`` (input) and ``message_delta``
(output); ``ping`` events are relayed like any other.
"""

from __future__ import annotations

import re

from runestone.errors import GatewayError
from runestone.sse import StreamScanner, event_data, loads_object, split_events
from runestone.upstream_errors import map_stream_error_event

_MARKERS = (b"message_start", b"message_delta", b"message_stop", b"error")


class AnthropicStreamScanner(StreamScanner):
    __slots__ = ()

    END_MARKER = "message_stop"
    FIRST_CONTENT = re.compile(rb"content_block_delta|message_stop")

    def error_event(self, error: GatewayError, request_id: str | None) -> bytes:
        return error.to_anthropic_sse(request_id)

    def _scan(self, complete: bytes) -> bytes:
        # Content deltas are most of a stream and carry none of these words as event types.
        for marker in _MARKERS:
            if marker in complete:
                return self._inspect(complete)
        return complete

    def _inspect(self, complete: bytes) -> bytes:
        end = 0
        for event in split_events(complete):
            start, end = end, end + len(event)
            data = event_data(event)
            payload = loads_object(data) if data else None
            if payload is None:
                continue
            kind = payload.get("type")
            if kind == "error":
                self.summary.error = map_stream_error_event(self.provider, payload.get("error"))
                return complete[:start]
            if kind == "message_start":
                message = payload.get("message")
                if isinstance(message, dict) and isinstance(message.get("usage"), dict):
                    self.summary.usage = dict(message["usage"])
            elif kind == "message_delta":
                usage = payload.get("usage")
                if isinstance(usage, dict):
                    self.summary.usage = {**(self.summary.usage or {}), **usage}
                delta = payload.get("delta")
                if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                    self.summary.finish_reason = delta["stop_reason"]
            elif kind == "message_stop":
                self.summary.done = True
                return complete[:end]
        return complete
