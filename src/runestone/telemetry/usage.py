"""Token usage as providers report it (never estimated from characters), validated.

Usage is read from the answer object's own top-level ``usage``, never from anywhere else
in the body (an answer may echo a client's metadata, which can hold anything). A figure
counts only if it is an integer from 0 to ``MAX_TOKENS``: a usage object with any other
is unknown as a whole (the request then books its worst case), and is logged.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import orjson

log = logging.getLogger("runestone.usage")

#: No request uses more tokens than this (the longest contexts offered are ~10M).
MAX_TOKENS = 100_000_000


class Usage(NamedTuple):
    """Tokens in (cache reads and writes included) and out; ``cached`` of the input read
    from a prompt cache, ``written`` of it written to one. None where unknown."""

    input: int | None
    output: int | None
    cached: int = 0
    written: int = 0


UNKNOWN = Usage(None, None)


def read(usage: object, provider: str = "-", *, output: bool = True) -> Usage:
    """The counts of an OpenAI, Anthropic or Responses usage object, or ``UNKNOWN``.

    With ``output=False`` (embeddings) the answer has no output to report.
    """
    if not isinstance(usage, dict):
        return UNKNOWN
    # Plain lookups and tests, not a loop: this runs for every answer.
    given = usage.get("prompt_tokens")
    if given is None:
        given = usage.get("input_tokens")
    taken = usage.get("completion_tokens")
    if taken is None:
        taken = usage.get("output_tokens")
        if taken is None and not output:
            taken = 0
    if given is None and taken is None:
        return UNKNOWN
    created = usage.get("cache_creation_input_tokens", 0)
    reads = usage.get("cache_read_input_tokens", 0)
    cached = _cached(usage)
    if not (
        type(given) is int
        and type(taken) is int
        and type(created) is int
        and type(reads) is int
        and type(cached) is int
        and 0 <= given <= MAX_TOKENS
        and 0 <= taken <= MAX_TOKENS
        and 0 <= created <= MAX_TOKENS
        and 0 <= reads <= MAX_TOKENS
        and 0 <= cached <= MAX_TOKENS
    ):
        log.warning("%s reported usage that is not a count of tokens: %.200s", provider, usage)
        return UNKNOWN
    total = given + created + reads
    read_back = min(cached + reads, total)
    written = created or _written(usage)
    return Usage(total, taken, read_back, min(written, total - read_back))


def _written(usage: dict[str, object]) -> int:
    """Input tokens written to a prompt cache, where an OpenAI-shaped usage translated
    from Anthropic's says so (``prompt_tokens_details.cache_write_tokens``)."""
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict):
        found = details.get("cache_write_tokens")
        if type(found) is int and 0 <= found <= MAX_TOKENS:
            return found
    return 0


def _cached(usage: dict[str, object]) -> object:
    """Input tokens read from a prompt cache, where OpenAI reports them (Anthropic's
    ``cache_read_input_tokens`` are apart from its ``input_tokens``)."""
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    if isinstance(details, dict):
        return details.get("cached_tokens") or 0
    return 0


def tokens(usage: object, provider: str = "-") -> tuple[int | None, int | None]:
    """(input, output) from a usage object; see ``read``."""
    found = read(usage, provider)
    return found.input, found.output


def from_body(body: bytes, provider: str = "-", *, output: bool = True) -> Usage:
    """Usage from a complete JSON answer: its own top-level ``usage``."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return UNKNOWN
    if not isinstance(answer, dict):
        return UNKNOWN
    return read(answer.get("usage"), provider, output=output)
