"""Checks of an upstream's output, before a translator relays it in another format.

A translator reads decoded JSON of any shape: what it relays must have the types the
client's format promises. A check that fails raises ``ValueError`` naming the field;
the translated stream (or answer) turns it into ``upstream_invalid_response``, the
upstream's fault, so that nothing of a wrong type reaches a client as is.
"""

from __future__ import annotations


def text(value: object, what: str) -> str:
    """``value`` if it is a string (maybe empty)."""
    if not isinstance(value, str):
        raise ValueError(f"{what} is not a string")
    return value


def name(value: object, what: str) -> str:
    """``value`` if it is a non-empty string."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} is not a non-empty string")
    return value


def index(value: object, what: str) -> int:
    """``value`` if it is a non-negative integer."""
    if type(value) is not int or value < 0:
        raise ValueError(f"{what} is not a non-negative integer")
    return value
