"""Provider failures mapped to gateway errors, by table: the one place this happens.

Two kinds of failure reach here. An HTTP error answer is mapped from the provider's
body by its meaning field first (OpenAI, Groq and most OpenAI-compatible servers put it
in ``error.code``; OpenRouter puts the HTTP status there and details in ``metadata``),
then by the HTTP status, then by message patterns. A transport failure (refused,
reset, timed out) is mapped by exception class: adapters wrap both the send and the
reading of the answer in ``map_transport_errors(provider)``, the one boundary where
the transport's exceptions (aiohttp's or pyreqwest's) become gateway errors (as httpx's
``map_httpcore_exceptions``).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Protocol

import aiohttp
import orjson

from runestone.errors import CODES, GatewayError, error_for
from runestone.providers.redact import redact

try:
    from pyreqwest import exceptions as reqwest_errors
except ImportError:  # the reqwest transport is optional (the ``reqwest`` extra)
    reqwest_errors = None  # type: ignore[assignment]

# error.code / error.type values that carry the meaning, as providers send them.
_BY_MEANING: dict[str, str] = {
    "rate_limit_exceeded": "upstream_rate_limited",
    "rate_limit_error": "upstream_rate_limited",
    "tokens": "upstream_rate_limited",
    "requests": "upstream_rate_limited",
    "insufficient_quota": "upstream_quota_exceeded",
    "billing_hard_limit_reached": "upstream_quota_exceeded",
    "context_length_exceeded": "context_length_exceeded",
    "string_above_max_length": "context_length_exceeded",
    "invalid_api_key": "upstream_auth_failed",
    "authentication_error": "upstream_auth_failed",
    "permission_error": "upstream_permission_denied",
    "model_not_found": "upstream_model_not_found",
    "model_decommissioned": "upstream_model_not_found",
    "content_policy_violation": "content_filtered",
    "content_filter": "content_filtered",
    "overloaded_error": "upstream_overloaded",
    "not_found_error": "upstream_model_not_found",
    "request_too_large": "request_too_large",
    "billing_error": "upstream_quota_exceeded",
    "service_unavailable": "upstream_overloaded",
}

_BY_STATUS: dict[int, str] = {
    400: "upstream_bad_request",
    401: "upstream_auth_failed",
    402: "upstream_quota_exceeded",
    403: "upstream_permission_denied",
    404: "upstream_model_not_found",
    408: "upstream_timeout",
    409: "upstream_server_error",
    413: "request_too_large",
    422: "upstream_bad_request",
    429: "upstream_rate_limited",
    500: "upstream_server_error",
    502: "upstream_server_error",
    503: "upstream_overloaded",
    504: "upstream_timeout",
    529: "upstream_overloaded",
}

# Checked only where status and meaning field left the cause open (a 400 or 403).
_BY_MESSAGE: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(
            r"context length|context window|maximum context|too many tokens|prompt is too long",
            re.I,
        ),
        "context_length_exceeded",
    ),
    (re.compile(r"moderation|content policy|flagged|safety", re.I), "content_filtered"),
)

# Codes whose upstream message may quote the gateway's key, or says nothing useful.
_OWN_MESSAGE = {"upstream_auth_failed", "upstream_permission_denied"}


def key_hint(provider: str) -> str:
    return f"{provider.upper().replace('-', '_')}_API_KEY"


class Headers(Protocol):
    """An answer's headers, looked up case-insensitively (aiohttp's, pyreqwest's)."""

    def get(self, name: str, /) -> str | None: ...


def map_upstream_response(
    provider: str, status: int, body: bytes, headers: Headers
) -> GatewayError:
    """Map a provider's HTTP error answer (status >= 400) to a ``GatewayError``."""
    message, meaning, has_error_body = _read_error_body(body)
    code = _BY_MEANING.get(meaning or "") if meaning else None
    if code is None:
        code = refine_by_message(code_for_status(status), message)
        if status == 404 and not has_error_body:
            code = "upstream_endpoint_not_found"
    text = _message_for(code, provider, status, message)
    retry_after = parse_retry_after(headers)
    return error_for(code, text, provider=provider, retry_after=retry_after, upstream_status=status)


def code_for_status(status: int) -> str:
    found = _BY_STATUS.get(status)
    if found is not None:
        return found
    return "upstream_server_error" if status >= 500 else "upstream_bad_request"


def refine_by_message(code: str, message: str | None) -> str:
    """A 400 or 403 says little by itself; its message may say context length or policy."""
    if message and code in ("upstream_bad_request", "upstream_permission_denied"):
        for pattern, by_message in _BY_MESSAGE:
            if pattern.search(message):
                return by_message
    return code


def after_stream_start(code: str | None) -> str:
    """A failure after the stream began is the upstream's, whatever it calls itself."""
    if code is None or CODES[code].fault == "client":
        return "upstream_server_error"
    return code


def _message_for(code: str, provider: str, status: int, upstream: str | None) -> str:
    if upstream:
        upstream = redact(upstream)
    if code == "upstream_auth_failed":
        return (
            f"{provider} rejected the gateway's API key (HTTP {status}); check {key_hint(provider)}"
        )
    if code == "upstream_permission_denied" and not upstream:
        return f"{provider} refused the gateway's key for this request (HTTP {status})"
    if code == "upstream_endpoint_not_found":
        return (
            f"{provider} answered HTTP 404 without an API error: the provider's base URL "
            f"is probably wrong (check {provider.upper()}_BASE_URL)"
        )
    if upstream and code not in _OWN_MESSAGE:
        return f"{provider}: {upstream}"
    if upstream and code == "upstream_permission_denied":
        return f"{provider} refused the gateway's key for this request: {upstream}"
    return f"{provider} answered HTTP {status}"


def _read_error_body(body: bytes) -> tuple[str | None, str | None, bool]:
    """(message, meaning, whether it was an API error body at all)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body[:200].decode("utf-8", "replace").strip()
        looks_like_text = bool(text) and not text.startswith("<")
        return (text if looks_like_text else None), None, False
    if not isinstance(data, dict):
        return None, None, False
    error = data.get("error", data if "message" in data else None)
    if isinstance(error, str):  # Ollama and others: {"error": "model 'x' not found"}
        return error, None, True
    if not isinstance(error, dict):
        return None, None, False
    message = error.get("message")
    meaning: str | None = None
    for field in ("code", "type"):
        value = error.get(field)
        if isinstance(value, str) and value in _BY_MEANING:
            meaning = value
            break
    metadata = error.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("raw"), str):
        # OpenRouter relays the underlying provider's words here.
        message = f"{message} ({metadata['raw'][:300]})" if message else metadata["raw"][:300]
    return (message if isinstance(message, str) else None), meaning, True


#: The longest wait an upstream can ask for; anything longer (or inf) is clamped to it.
MAX_RETRY_AFTER = 3600.0


def _seconds(text: str, scale: float = 1.0) -> float | None:
    """A finite number of seconds in [0, MAX_RETRY_AFTER], or None if it is not one."""
    try:
        value = float(text) * scale
    except (ValueError, OverflowError):
        return None
    if math.isnan(value):
        return None
    return min(max(value, 0.0), MAX_RETRY_AFTER)


def parse_retry_after(headers: Headers) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` or ``retry-after`` (seconds or a date).

    An upstream's header is untrusted input: ``inf``, ``1e400``, ``nan``, garbage and
    dates far off are clamped to ``[0, MAX_RETRY_AFTER]`` or ignored, never an error.
    """
    millis = headers.get("retry-after-ms")
    if millis:
        found = _seconds(millis, 0.001)
        if found is not None:
            return found
    value = headers.get("retry-after")
    if not value:
        return None
    found = _seconds(value)
    if found is not None:
        return found
    try:
        when = parsedate_to_datetime(value)
        return min(max(when.timestamp() - time.time(), 0.0), MAX_RETRY_AFTER)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


def map_transport_error(provider: str, exc: BaseException, *, streaming: bool) -> GatewayError:
    """Map an exception raised while talking to a provider."""
    if isinstance(exc, GatewayError):
        return exc
    # aiohttp raises one module-level "Connection closed" instance again and again, and
    # every raise prepends to its traceback: kept, it would hold every frame (scanners,
    # buffers, errors) of every stream it ever ended. Ours is the error that matters now.
    exc.__traceback__ = None
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return error_for(
            "upstream_timeout", f"{provider} did not answer in time", provider=provider
        )
    if streaming:
        return error_for(
            "upstream_stream_interrupted",
            f"{provider} closed the stream before it was complete ({_describe(exc)})",
            provider=provider,
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return error_for(
            "upstream_connection_failed",
            f"cannot connect to {provider} at {exc.host}:{exc.port} ({_describe(exc.os_error)})",
            provider=provider,
        )
    if isinstance(exc, _CONNECT_ERRORS):  # pyreqwest's: the address is in its causes
        return error_for(
            "upstream_connection_failed",
            f"cannot connect to {provider} ({_describe(exc)})",
            provider=provider,
        )
    if isinstance(exc, _UNREADABLE_ERRORS):
        return error_for(
            "upstream_invalid_response",
            f"{provider} sent an unreadable answer ({_describe(exc)})",
            provider=provider,
        )
    return error_for(
        "upstream_connection_failed",
        f"connection to {provider} failed ({_describe(exc)})",
        provider=provider,
    )


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    details = getattr(exc, "details", None)
    if isinstance(details, dict):  # pyreqwest's: a message, then its causes, outermost first
        causes = details.get("causes") or []
        deepest = causes[-1].get("message") if causes else None
        text = f"{getattr(exc, 'message', '')}: {deepest}" if deepest else str(exc.args[0])
    text = redact(text)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    (reqwest_errors.ConnectError,) if reqwest_errors is not None else ()
)
_UNREADABLE_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientPayloadError,
    aiohttp.ClientResponseError,
    *((reqwest_errors.ReadError, reqwest_errors.DecodeError) if reqwest_errors else ()),
)

#: What a transport can raise while sending a request or reading its answer.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,
    aiohttp.ClientError,
    OSError,
    *((reqwest_errors.PyreqwestError,) if reqwest_errors is not None else ()),
)


class map_transport_errors:
    """Re-raise a transport failure inside the block as the matching ``GatewayError``.

    A class, not a ``@contextmanager`` generator: it sits on every upstream call.

    >>> with map_transport_errors("openai"):
    ...     body = await response.read()
    """

    __slots__ = ("provider", "streaming")

    def __init__(self, provider: str, *, streaming: bool = False) -> None:
        self.provider = provider
        self.streaming = streaming

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is not None and isinstance(exc, TRANSPORT_ERRORS):
            raise map_transport_error(self.provider, exc, streaming=self.streaming) from exc


def map_stream_error_event(provider: str, error: object) -> GatewayError:
    """Map the ``error`` object of an in-band SSE error event sent inside a 200 stream."""
    message: str | None = None
    code: str | None = None
    if isinstance(error, dict):
        raw_message = error.get("message")
        message = raw_message if isinstance(raw_message, str) else None
        for field in ("code", "type"):
            value = error.get(field)
            if isinstance(value, str) and value in _BY_MEANING:
                code = _BY_MEANING[value]
                break
            if isinstance(value, int) and value in _BY_STATUS:  # OpenRouter: HTTP status
                code = _BY_STATUS[value]
                break
    elif isinstance(error, str):
        message = error
    code = after_stream_start(code)
    text = f"{provider} reported an error mid-stream: {redact(message or 'no message')}"
    return error_for(code, text, provider=provider)
