"""Provider error bodies, as the providers send them, mapped to the gateway's codes."""

from __future__ import annotations

import email.utils
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from runestone.errors import CODES, ClientError, GatewayFault, UpstreamError, error_for
from runestone.providers.errors import (
    map_stream_error_event,
    map_upstream_response,
    parse_retry_after,
)


def mapped(provider: str, status: int, body: dict[str, Any] | str, **headers: str):  # type: ignore[no-untyped-def]
    raw = body.encode() if isinstance(body, str) else orjson.dumps(body)
    return map_upstream_response(
        provider, status, raw, {k.replace("_", "-"): v for k, v in headers.items()}
    )


OPENAI_CASES = [
    (
        429,
        {
            "error": {
                "message": "Rate limit reached for gpt-4 in organization org-x on tokens per "
                "min (TPM): Limit 10000, Used 9000, Requested 2000. Please try again in 6s.",
                "type": "tokens",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        },
        "upstream_rate_limited",
        429,
        True,
    ),
    (
        429,
        {
            "error": {
                "message": "You exceeded your current quota, please check your plan and "
                "billing details.",
                "type": "insufficient_quota",
                "param": None,
                "code": "insufficient_quota",
            }
        },
        "upstream_quota_exceeded",
        429,
        False,
    ),
    (
        400,
        {
            "error": {
                "message": "This model's maximum context length is 8192 tokens. However, "
                "your messages resulted in 9000 tokens.",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }
        },
        "context_length_exceeded",
        400,
        False,
    ),
    (
        404,
        {
            "error": {
                "message": "The model `gpt-5` does not exist or you do not have access to it.",
                "type": "invalid_request_error",
                "param": None,
                "code": "model_not_found",
            }
        },
        "upstream_model_not_found",
        404,
        False,
    ),
    (
        500,
        {
            "error": {
                "message": "The server had an error while processing your request. Sorry "
                "about that!",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        },
        "upstream_server_error",
        502,
        True,
    ),
    (
        503,
        {
            "error": {
                "message": "The engine is currently overloaded, please try again later",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        },
        "upstream_overloaded",
        503,
        True,
    ),
    (
        400,
        {
            "error": {
                "message": "Your request was rejected as a result of our safety system.",
                "type": "invalid_request_error",
                "param": None,
                "code": "content_policy_violation",
            }
        },
        "content_filtered",
        400,
        False,
    ),
    (
        400,
        {
            "error": {
                "message": "Invalid value for 'temperature': must be <= 2.",
                "type": "invalid_request_error",
                "param": "temperature",
                "code": None,
            }
        },
        "upstream_bad_request",
        400,
        False,
    ),
]


@pytest.mark.parametrize(("status", "body", "code", "client_status", "retryable"), OPENAI_CASES)
def test_openai_errors(
    status: int, body: dict[str, Any], code: str, client_status: int, retryable: bool
) -> None:
    error = mapped("openai", status, body)
    assert (error.code, error.status, error.retryable) == (code, client_status, retryable)
    assert error.provider == "openai"
    assert error.upstream_status == status
    assert body["error"]["message"] in error.message


def test_openai_invalid_key_is_a_gateway_fault_and_never_echoes_the_key() -> None:
    error = mapped(
        "openai",
        401,
        {
            "error": {
                "message": "Incorrect API key provided: sk-abc***1234. You can find your API "
                "key at https://platform.openai.com/account/api-keys.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        },
    )
    assert isinstance(error, GatewayFault)
    assert (error.code, error.status, error.retryable) == ("upstream_auth_failed", 502, False)
    assert "sk-abc" not in error.message
    assert "OPENAI_API_KEY" in error.message


def test_groq_rate_limit_with_retry_after() -> None:
    error = mapped(
        "groq",
        429,
        {
            "error": {
                "message": "Rate limit reached for model `llama3-8b-8192` in organization "
                "`org_x` on tokens per minute (TPM): Limit 6000, Used 5000, Requested 2000. "
                "Please try again in 10s.",
                "type": "tokens",
                "code": "rate_limit_exceeded",
            }
        },
        retry_after="10",
    )
    assert isinstance(error, UpstreamError)
    assert error.code == "upstream_rate_limited"
    assert error.retry_after == 10.0


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (
            401,
            {
                "error": {
                    "message": "Invalid API Key",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            },
            "upstream_auth_failed",
        ),
        (
            404,
            {
                "error": {
                    "message": "The model `llama-9` does not exist or you do not have "
                    "access to it.",
                    "type": "invalid_request_error",
                    "code": "model_not_found",
                }
            },
            "upstream_model_not_found",
        ),
        (
            400,
            {
                "error": {
                    "message": "Please reduce the length of the messages or completion.",
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": "context_length_exceeded",
                }
            },
            "context_length_exceeded",
        ),
        (
            503,
            {"error": {"message": "Service Unavailable", "type": "internal_server_error"}},
            "upstream_overloaded",
        ),
    ],
)
def test_groq_errors(status: int, body: dict[str, Any], code: str) -> None:
    assert mapped("groq", status, body).code == code


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (
            402,
            {
                "error": {
                    "code": 402,
                    "message": "Insufficient credits. Add more using https://openrouter.ai/credits",
                }
            },
            "upstream_quota_exceeded",
        ),
        (
            429,
            {
                "error": {
                    "code": 429,
                    "message": "Rate limit exceeded: free-models-per-min.",
                    "metadata": {"headers": {"X-RateLimit-Limit": "20"}},
                }
            },
            "upstream_rate_limited",
        ),
        (
            403,
            {
                "error": {
                    "code": 403,
                    "message": "Input was flagged",
                    "metadata": {
                        "reasons": ["violence"],
                        "flagged_input": "...",
                        "provider_name": "OpenAI",
                        "model_slug": "openai/gpt-4o",
                    },
                }
            },
            "content_filtered",
        ),
        (408, {"error": {"code": 408, "message": "Timed out"}}, "upstream_timeout"),
        (
            400,
            {
                "error": {
                    "code": 400,
                    "message": "This endpoint's maximum context length is "
                    "8192 tokens. However, you requested about 9000 tokens.",
                }
            },
            "context_length_exceeded",
        ),
        (
            502,
            {
                "error": {
                    "code": 502,
                    "message": "Provider returned error",
                    "metadata": {"raw": "upstream exploded", "provider_name": "Together"},
                }
            },
            "upstream_server_error",
        ),
        (
            503,
            {
                "error": {
                    "code": 503,
                    "message": "No available model provider that meets your routing requirements",
                }
            },
            "upstream_overloaded",
        ),
    ],
)
def test_openrouter_errors(status: int, body: dict[str, Any], code: str) -> None:
    error = mapped("openrouter", status, body)
    assert error.code == code


def test_openrouter_raw_metadata_is_kept_in_the_message() -> None:
    error = mapped(
        "openrouter",
        502,
        {
            "error": {
                "code": 502,
                "message": "Provider returned error",
                "metadata": {"raw": "upstream exploded", "provider_name": "Together"},
            }
        },
    )
    assert "upstream exploded" in error.message


def test_ollama_string_error() -> None:
    error = mapped("ollama", 404, {"error": 'model "llama9" not found, try pulling it first'})
    assert error.code == "upstream_model_not_found"
    assert "try pulling it first" in error.message


def test_html_404_means_a_wrong_base_url() -> None:
    error = mapped("openai", 404, "<html><body>Not Found</body></html>")
    assert error.code == "upstream_endpoint_not_found"
    assert "OPENAI_BASE_URL" in error.message


def test_html_502_from_a_load_balancer() -> None:
    error = mapped("together", 502, "<html><head><title>502 Bad Gateway</title></head></html>")
    assert (error.code, error.retryable) == ("upstream_server_error", True)
    assert error.message == "together answered HTTP 502"


def test_529_is_overloaded() -> None:
    assert mapped("x", 529, {"error": {"message": "busy"}}).code == "upstream_overloaded"


def test_unknown_4xx_and_5xx() -> None:
    assert mapped("x", 418, {"error": {"message": "teapot"}}).code == "upstream_bad_request"
    assert mapped("x", 599, "oops").code == "upstream_server_error"


def test_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "12"}) == 12.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "soon"}) is None
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    seconds = parse_retry_after({"retry-after": when})
    assert seconds is not None and 28 <= seconds <= 31


def test_stream_error_event_meanings() -> None:
    assert map_stream_error_event("p", {"code": "rate_limit_exceeded"}).code == (
        "upstream_rate_limited"
    )
    assert map_stream_error_event("p", {"code": 502, "message": "x"}).code == (
        "upstream_server_error"
    )
    # a client-fault code mid-stream is still the upstream's failure to finish
    assert map_stream_error_event("p", {"code": "context_length_exceeded"}).code == (
        "upstream_server_error"
    )
    assert "boom" in map_stream_error_event("p", "boom").message


def test_every_code_is_one_of_three_faults_with_a_matching_class() -> None:
    classes = {"client": ClientError, "gateway": GatewayFault, "upstream": UpstreamError}
    for code, info in CODES.items():
        error = error_for(code, "m")
        assert isinstance(error, classes[info.fault])
        assert error.status == info.status
        assert 400 <= info.status <= 599


def test_envelope_shape() -> None:
    error = error_for("upstream_rate_limited", "slow down", provider="groq", retry_after=3)
    assert error.envelope("req_1") == {
        "error": {
            "message": "slow down",
            "type": "rate_limit_error",
            "param": None,
            "code": "upstream_rate_limited",
            "provider": "groq",
            "retryable": True,
            "status": 429,
            "retry_after": 3,
        },
        "request_id": "req_1",
    }
    assert repr(error) == "<UpstreamError upstream_rate_limited 429 provider=groq: slow down>"


def test_readme_documents_every_code() -> None:
    readme = (Path(__file__).parent.parent / "docs" / "errors.md").read_text()
    for code, info in CODES.items():
        retry = "yes" if info.retryable else "no"
        row = f"| `{code}` | {info.fault} | {info.status} | {retry} | {info.meaning} |"
        assert row in readme, f"docs/errors.md lacks the row for {code}"
