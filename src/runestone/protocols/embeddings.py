"""OpenAI embeddings: a non-streamed operation in the OpenAI error shape."""

from __future__ import annotations

from runestone.errors import error_for
from runestone.protocols._base import ClientProtocol, require_model
from runestone.protocols.openai_chat import error_json


def validate_embeddings(body: object) -> dict[str, object]:
    checked = require_model(body)
    if checked.get("input") in (None, "", []):
        raise error_for("invalid_request", "'input' must not be empty", param="input")
    return checked


EMBEDDINGS = ClientProtocol(
    operation="embeddings",
    title="embeddings",
    validate=validate_embeddings,
    error_body=error_json,
)
