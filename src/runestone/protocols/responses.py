"""OpenAI Responses (``POST /v1/responses``): request check, stream scanner, error shapes.

Streams are ``event: <type>`` / ``data: {...}`` pairs with a ``sequence_number`` each. A
clean stream ends with ``response.completed`` (or ``response.incomplete``, an answer cut
by its token limit: complete as a stream); a failure ends with ``response.failed``
carrying the gateway's error, and never a ``response.completed``. Usage comes in the
final response object. Errors before the stream are the gateway's OpenAI envelope.
"""

from __future__ import annotations

import orjson

from runestone.errors import GatewayError, error_for
from runestone.protocols._base import ClientProtocol, require_model
from runestone.protocols.openai_chat import error_json
from runestone.providers.errors import map_stream_error_event
from runestone.streams.sse import StreamScanner, encode

_MARKERS = (b"response.completed", b"response.incomplete", b"response.failed", b'"error"')


def validate_responses(body: object) -> dict[str, object]:
    checked = require_model(body)
    given = checked.get("input")
    empty = not isinstance(given, str | list) or not given
    if empty and checked.get("previous_response_id") is None:
        raise error_for(
            "invalid_request", "'input' must be a non-empty string or list of items", param="input"
        )
    stream = checked.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise error_for("invalid_request", "'stream' must be true or false", param="stream")
    return checked


class ResponsesStreamScanner(StreamScanner):
    __slots__ = ("_events",)

    END_MARKER = "response.completed"
    CONTENT_MARKERS = (
        b"response.output_text.delta",
        b"response.function_call_arguments.delta",
        b"response.output_item.added",
        b"response.completed",
        b"response.incomplete",
    )

    def __init__(self, provider: str) -> None:
        super().__init__(provider)
        self._events = 0  # for the sequence number of an event the gateway adds

    def error_event(self, error: GatewayError, request_id: str | None) -> bytes:
        return failed_event(error, request_id, self._events)

    def _scan(self, complete: bytes) -> bytes:
        self._events += complete.count(b"\n\n")
        for marker in _MARKERS:
            if complete.rfind(marker) >= 0:  # a miss: rfind is cheaper than ``in``
                return self._inspect(complete)
        return complete

    def _inspect(self, complete: bytes) -> bytes:
        for start, end, payload in self._payloads(complete, _MARKERS):
            kind = payload.get("type")
            if kind in ("response.completed", "response.incomplete"):
                response = payload.get("response")
                if isinstance(response, dict):
                    self.summary.final = response
                    if isinstance(response.get("usage"), dict):
                        self.summary.usage = response["usage"]
                self.summary.done = True
                return complete[:end]
            if kind == "response.failed":
                response = payload.get("response")
                failure = response.get("error") if isinstance(response, dict) else None
                self.summary.error = map_stream_error_event(self.provider, failure)
                return complete[:start]
            if kind == "error":
                self.summary.error = map_stream_error_event(self.provider, payload)
                return complete[:start]
        return complete


def failed_event(error: GatewayError, request_id: str | None, sequence: int = 0) -> bytes:
    """``response.failed``: how a Responses stream that already started ends on an error."""
    failure = {"code": error.code, "message": error.message, **error.gateway_fields()}
    response: dict[str, object] = {
        "id": f"resp_{request_id or 'failed'}",
        "object": "response",
        "status": "failed",
        "error": failure,
        "output": [],
        "request_id": request_id,
    }
    payload = {"type": "response.failed", "sequence_number": sequence, "response": response}
    return encode(orjson.dumps(payload), "response.failed")


def _scanner(provider: str, hide_usage: bool) -> StreamScanner:
    return ResponsesStreamScanner(provider)


RESPONSES = ClientProtocol(
    operation="responses",
    title="Responses API requests",
    validate=validate_responses,
    error_body=error_json,
    scanner=_scanner,
)
