"""Who a request is for, and what it is about: the end user of the application that
holds the key, and the caller's tags, booked with what the request used.

The end user is the ``x-runestone-user`` header, else the body's own field: OpenAI's
``user`` or ``safety_identifier``, Anthropic's ``metadata.user_id``. Tags are the
``x-runestone-tags`` header, comma-separated. Both are the clients' to choose, so the
names booked per key and day are bounded: past ``MAX_NAMES`` of a kind, the rest are
booked together as ``(other)`` (per process; replicas each keep their own bound). An
end user's budget counts the real name, which its window's expiry bounds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from runestone.errors import error_for

MAX_END_USER_CHARS = 128
MAX_TAGS = 10
MAX_NAMES = 1000
OTHER = "(other)"
_TAG = re.compile(r"^[A-Za-z0-9_.:/=+@-]{1,64}$")
_PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]+$")


def end_user_of(body: Mapping[str, object], header: str | None) -> str | None:
    """The request's end user, or None; a malformed one is the client's error."""
    found: object = header
    if found is None:
        found = body.get("user") or body.get("safety_identifier")
    if found is None:
        metadata = body.get("metadata")
        if isinstance(metadata, Mapping):
            found = metadata.get("user_id")
    if found is None or found == "":
        return None
    if not isinstance(found, str) or len(found) > MAX_END_USER_CHARS or not _PRINTABLE.match(found):
        raise error_for(
            "invalid_request",
            f"the end user (x-runestone-user, user, safety_identifier or metadata.user_id) "
            f"must be text of at most {MAX_END_USER_CHARS} printable characters",
        )
    return found.strip() or None


def tags_of(header: str | None) -> tuple[str, ...]:
    """The ``x-runestone-tags`` header's tags, or the client's error."""
    if not header:
        return ()
    tags = tuple(sorted({tag.strip() for tag in header.split(",") if tag.strip()}))
    if len(tags) > MAX_TAGS or not all(_TAG.match(tag) for tag in tags):
        raise error_for(
            "invalid_request",
            f"x-runestone-tags: at most {MAX_TAGS} comma-separated tags, each 1-64 of "
            "letters, digits and '_.:/=+@-'",
        )
    return tags


class Names:
    """The names booked per key, kind and day, at most ``MAX_NAMES`` each."""

    def __init__(self) -> None:
        self._day = ""
        self._seen: dict[tuple[str, str], set[str]] = {}

    def __call__(self, day: str, key: str, kind: str, name: str) -> str:
        if day != self._day:
            self._day, self._seen = day, {}
        seen = self._seen.setdefault((key, kind), set())
        if name in seen:
            return name
        if len(seen) >= MAX_NAMES:
            return OTHER
        seen.add(name)
        return name
