"""Failures from any-llm (and the provider SDKs under it), mapped to gateway errors.

By class name, so that mapping them needs no import of any-llm; then by the SDK's own
transport errors, then by HTTP status and message, as for the pass-through adapters.
"""

from __future__ import annotations

import json

from runestone.errors import GatewayError, error_for
from runestone.providers.errors import (
    after_stream_start,
    code_for_status,
    parse_retry_after,
    refine_by_message,
)
from runestone.providers.redact import redact

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
        code = code_for_status(status)
    code = refine_by_message(code or "upstream_server_error", str(exc))
    if streaming:
        code = after_stream_start(code)
    message = getattr(exc, "message", None) or str(exc) or name
    if isinstance(exc, ImportError):
        message = (
            f"{provider}: its SDK is not installed in the gateway's environment; "
            f"pip install 'any-llm-sdk[{provider}]' ({exc})"
        )
    elif code == "upstream_auth_failed":
        message = f"{provider} rejected the gateway's API key; check its API key variable"
    elif not message.startswith(provider):
        message = f"{provider}: {redact(message)}"
    else:
        message = redact(message)
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
