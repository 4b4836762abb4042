"""Token usage as providers report it (never estimated from characters)."""

from __future__ import annotations

import orjson


def tokens(usage: object) -> tuple[int | None, int | None]:
    """(input, output) from an OpenAI or Anthropic usage object."""
    if not isinstance(usage, dict):
        return None, None
    given = usage.get("prompt_tokens", usage.get("input_tokens"))
    taken = usage.get("completion_tokens", usage.get("output_tokens"))
    return (
        given if isinstance(given, int) else None,
        taken if isinstance(taken, int) else None,
    )


def from_body(body: bytes) -> tuple[int | None, int | None]:
    """Usage from a complete JSON answer; it sits at the end, so only that part is read."""
    at = body.rfind(b'"usage"')
    if at < 0:
        return None, None
    start = body.find(b"{", at)
    end = body.find(b"}", start)
    # Usage may nest (prompt_tokens_details): widen to the next brace until it parses.
    for _ in range(4):
        if start < 0 or end < 0:
            break
        try:
            return tokens(orjson.loads(body[start : end + 1]))
        except orjson.JSONDecodeError:
            end = body.find(b"}", end + 1)
    return None, None
