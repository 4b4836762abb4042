"""Anthropic Messages (and token counting): request checks, stream scanner, error shapes.

Streams are ``event: <type>`` / ``data: {...}`` pairs. A clean stream ends with
``message_stop``; a failure ends with ``event: error`` and no ``message_stop``. Usage
comes in ``message_start`` (input) and ``message_delta`` (output); ``ping`` events are
relayed like any other. Errors take Anthropic's shape, with the gateway's fields added.
"""

from __future__ import annotations

import orjson

from runestone.errors import GatewayError, error_for
from runestone.protocols._base import ClientProtocol, require_messages, require_model
from runestone.providers.errors import map_stream_error_event
from runestone.streams.sse import StreamScanner, encode

_MARKERS = (b"message_start", b"message_delta", b"message_stop", b"error")


class AnthropicStreamScanner(StreamScanner):
    __slots__ = ()

    END_MARKER = "message_stop"
    CONTENT_MARKERS = (b"content_block_delta", b"message_stop")

    def error_event(self, error: GatewayError, request_id: str | None) -> bytes:
        return error_event(error, request_id)

    def _scan(self, complete: bytes) -> bytes:
        # Content deltas are most of a stream and carry none of these words as event types.
        for marker in _MARKERS:
            if complete.rfind(marker) >= 0:  # a miss: rfind is cheaper than ``in``
                return self._inspect(complete)
        return complete

    def _inspect(self, complete: bytes) -> bytes:
        for start, end, payload in self._payloads(complete, _MARKERS):
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


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
}


def anthropic_type(error: GatewayError) -> str:
    if error.code == "upstream_overloaded":
        return "overloaded_error"
    return _ANTHROPIC_TYPES.get(error.status, "api_error")


def envelope(error: GatewayError, request_id: str | None) -> dict[str, object]:
    """The gateway's error in Anthropic's shape, with the same extra fields."""
    fields = {"type": anthropic_type(error), "message": error.message}
    return {
        "type": "error",
        "error": {**fields, **error.gateway_fields()},
        "request_id": request_id,
    }


def error_json(error: GatewayError, request_id: str | None) -> bytes:
    return orjson.dumps(envelope(error, request_id))


def error_event(error: GatewayError, request_id: str | None) -> bytes:
    return encode(error_json(error, request_id), "error")


def validate_messages(body: object) -> dict[str, object]:
    checked = require_messages(require_model(body))
    max_tokens = checked.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise error_for(
            "invalid_request", "'max_tokens' must be a positive integer", param="max_tokens"
        )
    return checked


def validate_count_tokens(body: object) -> dict[str, object]:
    return require_messages(require_model(body))


def _scanner(provider: str, hide_usage: bool) -> StreamScanner:
    return AnthropicStreamScanner(provider)


_FORWARDED = frozenset({b"anthropic-version", b"anthropic-beta"})

MESSAGES = ClientProtocol(
    operation="messages",
    title="Anthropic Messages requests",
    validate=validate_messages,
    error_body=error_json,
    scanner=_scanner,
    forward_headers=_FORWARDED,
)

COUNT_TOKENS = ClientProtocol(
    operation="count_tokens",
    title="token counting (an Anthropic Messages feature)",
    validate=validate_count_tokens,
    error_body=error_json,
    forward_headers=_FORWARDED,
)
