"""Literal inputs for the Anthropic stream scanner and the any-llm error mapping."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from runestone.protocols.anthropic_messages import AnthropicStreamScanner
from runestone.providers.anyllm_errors import map_anyllm_error
from runestone.providers.errors import map_upstream_response
from runestone.streams.relay import relay_stream
from tests.servers import anthropic_stream, sse_event

EVENTS = anthropic_stream("claude-3-5-sonnet-20241022", ["Hello", " there"])
WHOLE = b"".join(EVENTS)


async def relay(pieces: list[bytes]) -> tuple[bytes, AnthropicStreamScanner]:
    async def source() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    scanner = AnthropicStreamScanner("anthropic")
    out = b"".join([p async for p in relay_stream(source(), scanner, "req_9")])
    return out, scanner


async def test_clean_anthropic_stream() -> None:
    out, scanner = await relay(EVENTS)
    assert out == WHOLE
    assert scanner.summary.done
    assert scanner.summary.usage == {"input_tokens": 12, "output_tokens": 6}
    assert scanner.summary.finish_reason == "end_turn"


@pytest.mark.parametrize("cut", range(1, len(WHOLE), 37))
async def test_anthropic_events_split_across_reads(cut: int) -> None:
    out, scanner = await relay([WHOLE[:cut], WHOLE[cut:]])
    assert out == WHOLE
    assert scanner.summary.done


async def test_anthropic_stream_without_message_stop_is_interrupted() -> None:
    out, _ = await relay(EVENTS[:-1])
    assert out.startswith(b"".join(EVENTS[:-1]))
    assert out.endswith(b"\n\n")
    last = out.split(b"\n\n")[-2]
    assert last.startswith(b"event: error\ndata: {")
    assert b'"code":"upstream_stream_interrupted"' in last
    assert b'"type":"api_error"' in last
    assert b'"request_id":"req_9"' in last


async def test_anthropic_in_stream_error() -> None:
    error = sse_event(
        "error", {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    )
    out, scanner = await relay([*EVENTS[:3], error, *EVENTS[3:]])
    assert out.startswith(b"".join(EVENTS[:3]))
    assert b"message_stop" not in out
    assert scanner.summary.error is not None
    assert scanner.summary.error.code == "upstream_rate_limited"
    assert b'"type":"rate_limit_error"' in out


@pytest.mark.parametrize(
    ("status", "kind", "message", "code"),
    [
        (400, "invalid_request_error", "max_tokens: Field required", "upstream_bad_request"),
        (
            400,
            "invalid_request_error",
            "prompt is too long: 210000 tokens > 200000 maximum",
            "context_length_exceeded",
        ),
        (401, "authentication_error", "invalid x-api-key", "upstream_auth_failed"),
        (
            403,
            "permission_error",
            "Your API key does not have permission",
            "upstream_permission_denied",
        ),
        (404, "not_found_error", "model: claude-9", "upstream_model_not_found"),
        (413, "request_too_large", "Request exceeds the maximum allowed size", "request_too_large"),
        (
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your rate limit",
            "upstream_rate_limited",
        ),
        (500, "api_error", "Internal server error", "upstream_server_error"),
        (529, "overloaded_error", "Overloaded", "upstream_overloaded"),
    ],
)
def test_anthropic_error_bodies(status: int, kind: str, message: str, code: str) -> None:
    body = b'{"type":"error","error":{"type":"%s","message":"%s"}}' % (
        kind.encode(),
        message.encode(),
    )
    assert map_upstream_response("anthropic", status, body, {}).code == code


class _FakeAnyLLMError(Exception):
    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


def _named(name: str) -> type[_FakeAnyLLMError]:
    return type(name, (_FakeAnyLLMError,), {})


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("RateLimitError", 429, "upstream_rate_limited"),
        ("AuthenticationError", 401, "upstream_auth_failed"),
        ("ContextLengthExceededError", 400, "context_length_exceeded"),
        ("ContentFilterError", 400, "content_filtered"),
        ("ModelNotFoundError", 404, "upstream_model_not_found"),
        ("MissingApiKeyError", None, "provider_not_configured"),
        ("UnsupportedParameterError", None, "invalid_request"),
        ("InsufficientFundsError", 402, "upstream_quota_exceeded"),
        ("ProviderError", 529, "upstream_overloaded"),
        ("ProviderError", 502, "upstream_server_error"),
        ("UpstreamProviderError", 503, "upstream_overloaded"),
    ],
)
def test_anyllm_exception_classes(name: str, status: int | None, code: str) -> None:
    assert map_anyllm_error("anthropic", _named(name)("boom", status)).code == code


def test_anyllm_import_error_says_what_to_install() -> None:
    error = map_anyllm_error(
        "gemini",
        ImportError(
            "gemini required packages are not installed. Please install "
            "them with `pip install any-llm-sdk[gemini]`"
        ),
    )
    assert error.code == "provider_not_configured"
    assert "any-llm-sdk[gemini]" in error.message


def test_anyllm_rate_limit_keeps_retry_after() -> None:
    exc = _named("RateLimitError")("slow down", 429)
    exc.retry_after = "7"  # type: ignore[attr-defined]
    assert map_anyllm_error("anthropic", exc).retry_after == 7.0


def test_any_llm_is_imported_lazily() -> None:
    code = (
        "import sys, runestone, runestone.http, runestone.routing; print('any_llm' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
