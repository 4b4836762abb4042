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
    if start < 0:
        return None, None
    depth = 0
    for index in range(start, min(len(body), start + 2048)):
        byte = body[index]
        if byte == 0x7B:  # {
            depth += 1
        elif byte == 0x7D:  # }
            depth -= 1
            if depth == 0:
                try:
                    return tokens(orjson.loads(body[start : index + 1]))
                except orjson.JSONDecodeError:
                    return None, None
    return None, None
