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

# Input tokens that some formats report apart from their main figure (Anthropic's cache
# reads and writes are not in its input_tokens; OpenAI's cached tokens are).
_CACHE_FIELDS = ("cache_creation_input_tokens", "cache_read_input_tokens")


class Usage(NamedTuple):
    """Tokens in (cache reads and writes included) and out; ``cached`` of the input read
    from a prompt cache. None where unknown."""

    input: int | None
    output: int | None
    cached: int = 0


UNKNOWN = Usage(None, None)


def read(usage: object, provider: str = "-", *, output: bool = True) -> Usage:
    """The counts of an OpenAI, Anthropic or Responses usage object, or ``UNKNOWN``.

    With ``output=False`` (embeddings) the answer has no output to report.
    """
    if not isinstance(usage, dict):
        return UNKNOWN
    given = usage.get("prompt_tokens", usage.get("input_tokens"))
    taken = usage.get("completion_tokens", usage.get("output_tokens"))
    if taken is None and not output:
        taken = 0
    numbers = [given, taken, *(usage.get(name, 0) for name in _CACHE_FIELDS), _cached(usage)]
    if given is None and taken is None:
        return UNKNOWN
    if not all(type(n) is int and 0 <= n <= MAX_TOKENS for n in numbers):
        log.warning("%s reported usage that is not a count of tokens: %.200s", provider, usage)
        return UNKNOWN
    given_n, taken_n, created, reads, cached = (int(n) for n in numbers)
    total = given_n + created + reads
    return Usage(total, taken_n, min(cached + reads, total))


def _cached(usage: dict[str, object]) -> object:
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
