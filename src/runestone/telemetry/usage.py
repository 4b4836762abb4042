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
    start = body.find(b"{", at) if at >= 0 else -1
    if start < 0:
        return None, None
    # Usage nests (prompt_tokens_details) but holds no strings with braces: it ends at
    # the first closing brace that closes as many braces as were opened since ``start``.
    end, closed = start, 0
    while True:
        end = body.find(b"}", end + 1)
        if end < 0:
            return None, None
        closed += 1
        if body.count(b"{", start, end) == closed:
            break
    try:
        return tokens(orjson.loads(body[start : end + 1]))
    except orjson.JSONDecodeError:
        return None, None
