"""Where the API's keys and teams, the audit log and the alerts' claims are kept.

One interface, two stores, beside the limits' own (SQLite on one host, Redis for
several replicas). A record is a JSON document under a name (``key:<id>``,
``team:<id>``); records are never deleted (a revoked key stays, marked), so every
change is a new version of one record, and a replica catches up by reading the records
changed since the version it last saw: polled twice a second, that is one small read
when nothing changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

#: The most audit entries one read returns, and the most the store keeps (oldest go).
MAX_AUDIT_PAGE = 1000
MAX_AUDIT_ENTRIES = 1_000_000


@dataclass(frozen=True, slots=True)
class Changes:
    """Records changed after a version: ``(name, body)``, and the version now."""

    version: int
    records: list[tuple[str, bytes]]
    #: The store no longer knows every change since: ``records`` holds them all.
    complete: bool = False


class KeyringStore(Protocol):
    name: str

    async def version(self) -> int:
        """The version of the latest change (0 before any)."""
        ...

    async def changes(self, since: int) -> Changes:
        """What changed after version ``since`` (everything, for 0)."""
        ...

    async def put(self, name: str, body: bytes, *, create: bool) -> int | None:
        """Write a record; with ``create``, only if no record has that name (else None).
        Returns the new version."""
        ...

    async def append_audit(self, entry: bytes) -> None: ...

    async def audit(
        self, before: str | None, limit: int
    ) -> tuple[list[tuple[str, bytes]], str | None]:
        """Audit entries (each with its cursor) newest first, from before the cursor
        ``before``; and the cursor of the next page (None at the end)."""
        ...

    async def claim(self, name: str, seconds: float) -> bool:
        """True for the first caller, on any replica, to claim ``name`` within
        ``seconds``; False for every other."""
        ...

    async def aclose(self) -> None: ...


def page_of(
    entries: Sequence[tuple[str, bytes]], limit: int
) -> tuple[list[tuple[str, bytes]], str | None]:
    """A page of ``limit`` from (cursor, entry) pairs read with one to spare."""
    return list(entries[:limit]), entries[limit - 1][0] if len(entries) > limit else None
