"""What the gateway itself checks in a request body, per operation.

Only what routing relies on is checked here; everything else is the provider's to judge,
and unknown fields pass through untouched.
"""

from __future__ import annotations

from typing import Literal

from runestone.errors import error_for

Operation = Literal["chat", "messages", "count_tokens", "embeddings"]


def validate(operation: Operation, body: object) -> dict[str, object]:
    if not isinstance(body, dict):
        raise error_for("invalid_request", "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise error_for(
            "invalid_request",
            "'model' must be a non-empty string: an alias or provider:model",
            param="model",
        )
    if operation == "embeddings":
        if body.get("input") in (None, "", []):
            raise error_for("invalid_request", "'input' must not be empty", param="input")
        return body
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise error_for("invalid_request", "'messages' must be a non-empty list", param="messages")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise error_for("invalid_request", "'stream' must be true or false", param="stream")
    if operation == "messages":
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise error_for(
                "invalid_request", "'max_tokens' must be a positive integer", param="max_tokens"
            )
    return body


def validate_chat_request(body: object) -> dict[str, object]:
    """A chat-completions body (the library calls use this directly)."""
    return validate("chat", body)
