"""What a client wire format is to the gateway: one ``ClientProtocol`` record per operation.

Each module of this package owns one wire format: what the gateway checks in a request,
how its streams are scanned, how its errors look (the envelope, and the in-band event
that ends a stream which already started). Only what routing relies on is checked;
everything else is the provider's to judge, and unknown fields pass through untouched.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from runestone.errors import GatewayError, error_for
from runestone.providers.adapter import Operation
from runestone.streams.sse import StreamScanner

#: A stream scanner for one upstream: (provider, hide the usage chunk the gateway added).
ScannerFactory = Callable[[str, bool], StreamScanner]


def _never(body: Mapping[str, object]) -> bool:
    return False


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientProtocol:
    """One operation of one client wire format.

    ``operation`` doubles as the telemetry route label. A protocol without a
    ``scanner`` never streams.
    """

    operation: Operation
    #: How the operation is named in messages ("chat completions").
    title: str
    #: The request body checked and returned as a dict, or ``ClientError``.
    validate: Callable[[object], dict[str, object]]
    #: The error envelope for a response that has not started.
    error_body: Callable[[GatewayError, str | None], bytes]
    scanner: ScannerFactory | None = None
    #: Client headers that a same-format upstream should see.
    forward_headers: frozenset[bytes] = frozenset()
    #: Whether the gateway should ask this stream's upstream for usage the client did not.
    add_stream_usage: Callable[[Mapping[str, object]], bool] = _never


#: Longer model names are refused: no provider has one, and each distinct name costs
#: state (a breaker, a metric label) and time (an error message quoting it).
MAX_MODEL_BYTES = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def require_model(body: object) -> dict[str, object]:
    """A JSON object with a non-empty string ``model``: what every operation needs."""
    if not isinstance(body, dict):
        raise error_for("invalid_request", "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise error_for(
            "invalid_request",
            "'model' must be a non-empty string: an alias or provider:model",
            param="model",
        )
    if len(model) > MAX_MODEL_BYTES // 4 and len(model.encode()) > MAX_MODEL_BYTES:
        raise error_for(
            "invalid_request",
            f"'model' is longer than {MAX_MODEL_BYTES} bytes; no model has such a name",
            param="model",
        )
    if not model.isprintable() and _CONTROL.search(model):
        # A name with CR/LF or NUL would reach upstream headers and logs: refuse it whole.
        raise error_for("invalid_request", "'model' contains control characters", param="model")
    return body


def require_messages(body: dict[str, object]) -> dict[str, object]:
    """A non-empty ``messages`` list and a boolean ``stream`` if any (chat and Messages)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise error_for("invalid_request", "'messages' must be a non-empty list", param="messages")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise error_for("invalid_request", "'stream' must be true or false", param="stream")
    return body
