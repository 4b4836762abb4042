"""Where the counters live: one interface, two stores (SQLite on one host, Redis for many).

A store knows nothing of keys or prices. It keeps two kinds of numbers per counter:

- **buckets**: amounts added at a moment (requests, tokens, dollars spent), summed over
  the buckets of a window;
- **leases**: amounts held by requests in flight (a parallel slot, a budget
  reservation), each with an expiry, so that a gateway that dies mid-request cannot
  hold them for ever.

``sync`` first settles finished requests (gives their leases back, adds what they
really used), then admits new ones: each admission checks every limit of its request
and, only if all pass, takes what the request needs, atomically (one SQLite
transaction, one Redis script), so that concurrent requests, in any process, cannot all
pass a limit that only one of them fits under. One ``sync`` carries every request that
arrived or finished in the same turn of the event loop: one transaction or one round
trip for all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

Mode = Literal["count", "lease", "level"]

#: The most one store call may take, in seconds, however the store fails (a lock held by
#: another process, a server that accepts and never answers): the call is then a
#: ``StateError``, and the request is handled by ``on_state_error``.
STORE_TIMEOUT = 0.5
#: What one settlement may add to a counter or the ledger: a bound that no request
#: reaches and every store holds exactly (a float's integers, SQLite's integers).
MAX_AMOUNT = 2**50


@dataclass(slots=True)
class Check:
    """One limit for one request: ``used + amount <= limit``, or the request is refused.

    ``used`` is the sum of the counter's buckets from ``since`` on (when given) plus its
    live leases (when ``leases``). On admission, ``count`` adds ``amount`` to the
    bucket at ``bucket``; ``lease`` holds ``amount`` until settled; ``level`` only looks.
    """

    counter: str
    limit: float
    amount: float
    mode: Mode
    since: float | None = None
    bucket: float = 0.0
    leases: bool = False
    resets: float = 0.0  # when refusing, the moment that retrying can help
    keep: float = 0.0  # seconds the bucket must be kept


@dataclass(frozen=True, slots=True)
class Decision:
    """``refused`` is the first check that failed (nothing was taken), else None;
    ``used`` is each counter's use before this request."""

    refused: Check | None
    used: dict[str, float]


@dataclass(frozen=True, slots=True)
class Addition:
    counter: str
    bucket: float
    amount: float
    keep: float


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One request's use, for the usage report: per UTC day, key, team and model.

    ``estimated`` is 1 when the provider never said what the request used, and its
    worst case was booked instead.
    """

    day: str
    key: str
    team: str
    model: str
    input_tokens: int
    output_tokens: int
    usd: float
    estimated: int = 0
    #: Who it was for, and its tags (already bounded: see ``_attribution``).
    end_user: str = ""
    tags: tuple[str, ...] = ()


def spend_names(entry: LedgerEntry) -> list[tuple[str, str]]:
    """The (kind, name) rows an entry is booked under besides its key's."""
    found = [("user", entry.end_user)] if entry.end_user else []
    return found + [("tag", tag) for tag in entry.tags]


@dataclass(frozen=True, slots=True)
class SpendRow:
    """Spend per UTC day, key and end user (``kind`` "user") or tag (``kind`` "tag")."""

    day: str
    key: str
    kind: str
    name: str
    requests: int
    input_tokens: int
    output_tokens: int
    usd: float


@dataclass(frozen=True, slots=True)
class Request:
    """One request to admit: its checks, and the lease id its holds go by."""

    checks: tuple[Check, ...]
    lease: str
    expires: float  # its leases expire then, if never settled (its gateway died)


@dataclass(slots=True)
class Settlement:
    lease: str
    counters: tuple[str, ...]  # whose leases the request holds
    additions: list[Addition] = field(default_factory=list)
    ledger: LedgerEntry | None = None


@dataclass(frozen=True, slots=True)
class UsageRow:
    day: str
    key: str
    team: str
    model: str
    requests: int
    input_tokens: int
    output_tokens: int
    usd: float
    estimated: int = 0


class StateError(Exception):
    """The store could not be reached or did not answer in time."""


class Store(Protocol):
    name: str

    async def sync(
        self, settlements: Sequence[Settlement], requests: Sequence[Request], now: float
    ) -> list[Decision]:
        """Settle ``settlements``, then admit each of ``requests`` in order (a decision
        for each); all in one atomic step, or nothing and ``StateError``."""
        ...

    async def used(self, checks: Sequence[Check], now: float) -> dict[str, float]:
        """Each counter's use now, as ``admit`` would see it (for reports)."""
        ...

    async def usage(self, since_day: str, keys: Sequence[str] | None = None) -> list[UsageRow]:
        """The ledger's rows from ``since_day`` on, of ``keys`` only when given."""
        ...

    async def spend_by(self, since_day: str, keys: Sequence[str] | None = None) -> list[SpendRow]:
        """Spend per end user and tag from ``since_day`` on, of ``keys`` only when given."""
        ...

    async def check(self) -> None:
        """Raise ``StateError`` unless the store can be written now."""
        ...

    async def aclose(self) -> None: ...
