"""Runestone's one error type, its closed code vocabulary, and the envelope it renders.

Every failure a client can see is a ``GatewayError`` with a ``code`` from ``CODES``.
The code says who is at fault and fixes the HTTP status, the OpenAI error ``type`` and
whether retrying the same request can help::

    GatewayError                    code, status, retryable, provider, retry_after
    ├── ClientError                 the request itself is wrong: fix it, do not retry
    ├── GatewayFault                the gateway's own configuration or limits
    └── UpstreamError               the provider failed or refused

Rendered once, at the outside, as an OpenAI-compatible envelope (OpenAI SDKs parse it),
or on the Anthropic Messages endpoints in Anthropic's shape with the same fields
(``runestone.protocols.anthropic_messages``)::

    {"error": {"message": "...", "type": "rate_limit_error", "param": null,
               "code": "upstream_rate_limited", "provider": "groq",
               "retryable": true, "status": 429},
     "request_id": "req_..."}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import orjson

Fault = Literal["client", "gateway", "upstream"]


@dataclass(frozen=True, slots=True)
class CodeInfo:
    status: int
    type: str
    retryable: bool
    fault: Fault
    meaning: str


_INVALID = "invalid_request_error"

#: The closed vocabulary of error codes. README.md renders this table for users.
CODES: dict[str, CodeInfo] = {
    # The client's request is wrong.
    "invalid_request": CodeInfo(400, _INVALID, False, "client", "the request is malformed"),
    "invalid_json": CodeInfo(400, _INVALID, False, "client", "the body is not valid JSON"),
    "unsupported_parameter": CodeInfo(
        400, _INVALID, False, "client", "the target cannot honour a parameter of the request"
    ),
    "request_too_large": CodeInfo(413, _INVALID, False, "client", "the body is over the limit"),
    "unauthorized": CodeInfo(
        401, "authentication_error", False, "client", "missing or wrong gateway token"
    ),
    "model_not_found": CodeInfo(
        404, "not_found_error", False, "client", "no such alias or provider"
    ),
    "key_expired": CodeInfo(
        401, "authentication_error", False, "client", "the client's key is past its expiry"
    ),
    "key_blocked": CodeInfo(
        401, "authentication_error", False, "client", "the client's key or its team is blocked"
    ),
    "forbidden": CodeInfo(
        403, "permission_error", False, "client", "the credentials may not do this"
    ),
    "conflict": CodeInfo(
        409, _INVALID, False, "client", "the id is taken, or the change clashes with the state"
    ),
    "model_not_allowed": CodeInfo(
        403, "permission_error", False, "client", "the client's key may not use this model"
    ),
    "rate_limited": CodeInfo(
        429, "rate_limit_error", True, "client", "the key's or team's rate limit is reached"
    ),
    "budget_exceeded": CodeInfo(
        429,
        "insufficient_quota",
        False,
        "client",
        "the key's or team's budget is spent until its window resets",
    ),
    "not_found": CodeInfo(404, "not_found_error", False, "client", "no such endpoint"),
    "method_not_allowed": CodeInfo(405, _INVALID, False, "client", "wrong HTTP method"),
    "context_length_exceeded": CodeInfo(
        400, _INVALID, False, "client", "the prompt is longer than the model's context"
    ),
    "content_filtered": CodeInfo(
        400, _INVALID, False, "client", "the provider's content policy refused it"
    ),
    "content_blocked": CodeInfo(
        400, _INVALID, False, "client", "a guard of the gateway blocked the input or output"
    ),
    "upstream_bad_request": CodeInfo(
        400, _INVALID, False, "client", "the provider rejected the request as invalid"
    ),
    "upstream_model_not_found": CodeInfo(
        404, "not_found_error", False, "client", "the provider does not know the model"
    ),
    "client_disconnected": CodeInfo(
        499, _INVALID, False, "client", "the client went away before the answer ended"
    ),
    # The gateway's configuration or its own limits.
    "provider_not_configured": CodeInfo(
        500, "api_error", False, "gateway", "the provider's API key is not set"
    ),
    "provider_not_supported": CodeInfo(
        501, "api_error", False, "gateway", "the provider's wire format is not available"
    ),
    "upstream_auth_failed": CodeInfo(
        502, "api_error", False, "gateway", "the provider rejected the gateway's API key"
    ),
    "upstream_permission_denied": CodeInfo(
        502, "api_error", False, "gateway", "the gateway's key may not use this model"
    ),
    "upstream_endpoint_not_found": CodeInfo(
        502, "api_error", False, "gateway", "the provider URL is wrong (check its base URL)"
    ),
    "gateway_timeout": CodeInfo(
        504, "timeout_error", True, "gateway", "the request's deadline passed"
    ),
    "no_healthy_upstream": CodeInfo(
        503, "api_error", True, "gateway", "every target is unavailable"
    ),
    "internal_error": CodeInfo(500, "api_error", False, "gateway", "a bug in the gateway"),
    "state_unavailable": CodeInfo(
        503, "api_error", True, "gateway", "the limits' store cannot be reached"
    ),
    "gateway_shutting_down": CodeInfo(
        503, "api_error", True, "gateway", "the gateway is shutting down; retry elsewhere"
    ),
    # The upstream provider failed.
    "upstream_rate_limited": CodeInfo(
        429, "rate_limit_error", True, "upstream", "the provider is rate limiting"
    ),
    "upstream_quota_exceeded": CodeInfo(
        429, "insufficient_quota", False, "upstream", "the provider account is out of credit"
    ),
    "upstream_overloaded": CodeInfo(
        503, "overloaded_error", True, "upstream", "the provider is overloaded"
    ),
    "upstream_server_error": CodeInfo(
        502, "api_error", True, "upstream", "the provider had an internal error"
    ),
    "upstream_timeout": CodeInfo(504, "timeout_error", True, "upstream", "the provider timed out"),
    "upstream_connection_failed": CodeInfo(
        502, "api_error", True, "upstream", "could not connect to the provider"
    ),
    "upstream_stream_interrupted": CodeInfo(
        502, "api_error", True, "upstream", "the provider's stream broke off"
    ),
    "upstream_invalid_response": CodeInfo(
        502, "api_error", True, "upstream", "the provider's answer could not be read"
    ),
}


class GatewayError(Exception):
    """A failure with a code from ``CODES``; status and retryable follow from the code."""

    def __init__(
        self,
        message: str,
        code: str,
        *,
        provider: str | None = None,
        retry_after: float | None = None,
        param: str | None = None,
        upstream_status: int | None = None,
    ) -> None:
        super().__init__(message)
        info = CODES[code]
        self.message = message
        self.code = code
        self.status = info.status
        self.type = info.type
        self.retryable = info.retryable
        self.fault = info.fault
        self.provider = provider
        self.retry_after = retry_after
        self.param = param
        self.upstream_status = upstream_status
        # Filled in by the attempt loop when this error ends a request: how many attempts
        # were made, the last target tried, and the seconds spent on them (waiting on
        # upstreams and backing off), which are not the gateway's own time.
        self.attempts = 0
        self.target: str | None = None
        self.upstream = 0.0
        #: Headers the answer carries besides the envelope (rate-limit figures).
        self.headers: list[tuple[bytes, bytes]] = []

    def __repr__(self) -> str:
        where = f" provider={self.provider}" if self.provider else ""
        return f"<{type(self).__name__} {self.code} {self.status}{where}: {self.message}>"

    def gateway_fields(self) -> dict[str, object]:
        """What both envelope shapes add to their protocol's own error fields."""
        fields: dict[str, object] = {
            "code": self.code,
            "provider": self.provider,
            "retryable": self.retryable,
            "status": self.status,
        }
        if self.retry_after is not None:
            fields["retry_after"] = self.retry_after
        return fields

    def envelope(self, request_id: str | None) -> dict[str, object]:
        error = {"message": self.message, "type": self.type, "param": self.param}
        return {"error": {**error, **self.gateway_fields()}, "request_id": request_id}

    def to_json(self, request_id: str | None) -> bytes:
        return orjson.dumps(self.envelope(request_id))


class ClientError(GatewayError):
    """The client's request is wrong; retrying it unchanged cannot help."""


class GatewayFault(GatewayError):
    """The gateway's configuration or its own limits."""


class UpstreamError(GatewayError):
    """The provider failed or refused the request."""


def error_for(
    code: str,
    message: str,
    *,
    provider: str | None = None,
    retry_after: float | None = None,
    param: str | None = None,
    upstream_status: int | None = None,
) -> GatewayError:
    """Build the ``GatewayError`` subclass that matches ``code``'s fault."""
    cls = _BY_FAULT[CODES[code].fault]
    return cls(
        message,
        code,
        provider=provider,
        retry_after=retry_after,
        param=param,
        upstream_status=upstream_status,
    )


_BY_FAULT: dict[Fault, type[GatewayError]] = {
    "client": ClientError,
    "gateway": GatewayFault,
    "upstream": UpstreamError,
}


def drop_tracebacks(error: BaseException) -> None:
    """Forget where ``error``, and what caused it, were raised: it has been handled.

    A kept traceback keeps every frame it passed through with their locals, which often
    hold the error itself (whatever recorded it): a cycle that outlives the request until
    the garbage collector finds it, and that every collection meanwhile walks.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__
