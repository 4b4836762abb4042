"""Provider failures mapped to gateway errors, by table: the one place this happens.

Two kinds of failure reach here. An HTTP error answer is mapped from the provider's
body by its meaning field first (OpenAI, Groq and most OpenAI-compatible servers put it
in ``error.code``; OpenRouter puts the HTTP status there and details in ``metadata``),
then by the HTTP status, then by message patterns. A transport failure (refused,
reset, timed out) is mapped by exception class: adapters wrap both the send and the
reading of the answer in ``map_transport_errors(provider)``, the one boundary where
aiohttp's exceptions become gateway errors (as httpx's ``map_httpcore_exceptions``).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from types import TracebackType

import aiohttp
import orjson

from runestone.errors import CODES, GatewayError, error_for

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


def map_upstream_response(
    provider: str, status: int, body: bytes, headers: Mapping[str, str]
) -> GatewayError:
    """Map a provider's HTTP error answer (status >= 400) to a ``GatewayError``."""
    message, meaning, has_error_body = _read_error_body(body)
    code = _BY_MEANING.get(meaning or "") if meaning else None
    if code is None:
        code = _refine_by_message(_code_for_status(status), message)
        if status == 404 and not has_error_body:
            code = "upstream_endpoint_not_found"
    text = _message_for(code, provider, status, message)
    retry_after = parse_retry_after(headers)
    return error_for(code, text, provider=provider, retry_after=retry_after, upstream_status=status)


def _code_for_status(status: int) -> str:
    found = _BY_STATUS.get(status)
    if found is not None:
        return found
    return "upstream_server_error" if status >= 500 else "upstream_bad_request"


def _refine_by_message(code: str, message: str | None) -> str:
    """A 400 or 403 says little by itself; its message may say context length or policy."""
    if message and code in ("upstream_bad_request", "upstream_permission_denied"):
        for pattern, by_message in _BY_MESSAGE:
            if pattern.search(message):
                return by_message
    return code


def _after_stream_start(code: str | None) -> str:
    """A failure after the stream began is the upstream's, whatever it calls itself."""
    if code is None or CODES[code].fault == "client":
        return "upstream_server_error"
    return code


def _message_for(code: str, provider: str, status: int, upstream: str | None) -> str:
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


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` or ``retry-after`` (seconds or a date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(float(millis) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def map_transport_error(provider: str, exc: BaseException, *, streaming: bool) -> GatewayError:
    """Map an exception raised while talking to a provider."""
    if isinstance(exc, GatewayError):
        return exc
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
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
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
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


#: What a transport can raise while sending a request or reading its answer.
TRANSPORT_ERRORS = (TimeoutError, aiohttp.ClientError, OSError)


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
    code = _after_stream_start(code)
    text = f"{provider} reported an error mid-stream: {message or 'no message'}"
    return error_for(code, text, provider=provider)


# any-llm's unified exceptions, by class name so that mapping them needs no import of it.
_ANYLLM_CODES: dict[str, str] = {
    "RateLimitError": "upstream_rate_limited",
    "AuthenticationError": "upstream_auth_failed",
    "InvalidRequestError": "upstream_bad_request",
    "ContentFilterError": "content_filtered",
    "ContentFilterFinishReasonError": "content_filtered",
    "ModelNotFoundError": "upstream_model_not_found",
    "ContextLengthExceededError": "context_length_exceeded",
    "MissingApiKeyError": "provider_not_configured",
    "UnsupportedProviderError": "provider_not_supported",
    "UnsupportedParameterError": "invalid_request",
    "InsufficientFundsError": "upstream_quota_exceeded",
    "GatewayTimeoutError": "upstream_timeout",
}
# Transport failures, as the provider SDKs under any-llm name them.
_SDK_TRANSPORT_CODES: dict[str, str] = {
    "APITimeoutError": "upstream_timeout",
    "APIConnectionError": "upstream_connection_failed",
    "ReadTimeout": "upstream_timeout",
    "ConnectTimeout": "upstream_timeout",
    "ConnectError": "upstream_connection_failed",
    "RemoteProtocolError": "upstream_connection_failed",
}


def map_anyllm_error(provider: str, exc: BaseException, *, streaming: bool = False) -> GatewayError:
    """Map an exception from any-llm (or the provider SDK under it) to a ``GatewayError``."""
    if isinstance(exc, GatewayError):
        return exc
    name = type(exc).__name__
    original = getattr(exc, "original_exception", None)
    status = getattr(exc, "status_code", None)
    code = _ANYLLM_CODES.get(name)
    if code is None and original is not None:
        code = _SDK_TRANSPORT_CODES.get(type(original).__name__)
    if code is None:
        code = _SDK_TRANSPORT_CODES.get(name)
    if isinstance(exc, ImportError):
        code = "provider_not_configured"  # the provider's SDK extra is not installed
    elif isinstance(exc, NotImplementedError):
        code = "provider_not_supported"
    elif _is_translation_error(exc) and not streaming:
        # Raised while building the provider's request from the client's (a pydantic
        # error, an argument the SDK does not take): nothing reached the upstream, so it
        # is the request's fault, never the upstream's, and no breaker hears of it.
        code = "invalid_request"
    elif code is None and isinstance(status, int):
        code = _code_for_status(status)
    code = _refine_by_message(code or "upstream_server_error", str(exc))
    if streaming:
        code = _after_stream_start(code)
    message = getattr(exc, "message", None) or str(exc) or name
    if isinstance(exc, ImportError):
        message = (
            f"{provider}: its SDK is not installed in the gateway's environment; "
            f"pip install 'any-llm-sdk[{provider}]' ({exc})"
        )
    elif code == "upstream_auth_failed":
        message = f"{provider} rejected the gateway's API key; check its API key variable"
    elif not message.startswith(provider):
        message = f"{provider}: {message}"
    return error_for(
        code,
        message,
        provider=provider,
        retry_after=_anyllm_retry_after(exc, original),
        upstream_status=status if isinstance(status, int) else None,
    )


def _is_translation_error(exc: BaseException) -> bool:
    if isinstance(exc, UnicodeError | json.JSONDecodeError):
        return False  # an unreadable upstream answer
    return isinstance(exc, TypeError | ValueError) and _status_of(exc) is None


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _anyllm_retry_after(exc: BaseException, original: object) -> float | None:
    value = getattr(exc, "retry_after", None)
    if value is not None:
        return parse_retry_after({"retry-after": str(value)})
    response = getattr(original, "response", None)
    headers = getattr(response, "headers", None)
    if headers is not None:
        return parse_retry_after(
            {k: headers.get(k) for k in ("retry-after", "retry-after-ms") if headers.get(k)}
        )
    return None
