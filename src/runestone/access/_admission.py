"""What one admitted request holds until it is settled, and the lease id it goes by."""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from dataclasses import dataclass

from runestone.access._limits import Plan
from runestone.access._refusals import rate_headers
from runestone.access._store import Check
from runestone.access._worst_case import Bound
from runestone.aliases import AliasTable, KeySpec, TeamSpec
from runestone.pricing import Price

# Lease ids: a secret per-process prefix and a counter. Request ids are public (a client
# may even choose its own): a lease named by one could be shared, replayed or guessed.
_LEASE_PREFIX = "l" + os.urandom(12).hex()
_leases = itertools.count(1)


def new_lease() -> str:
    return f"{_LEASE_PREFIX}{next(_leases):x}"


@dataclass(slots=True)
class Admission:
    """What one admitted request holds, until ``settle``."""

    key: KeySpec
    team: TeamSpec | None
    table: AliasTable
    lease: str
    plan: Plan
    checks: tuple[Check, ...]
    used: Mapping[str, float]
    #: The most the request can use, and the highest price it can be charged at.
    bound: Bound
    price: Price | None
    #: Who it was for, and its tags (see ``_attribution``).
    end_user: str | None = None
    tags: tuple[str, ...] = ()


def rate_headers_for(admission: Admission | None, now: float) -> list[tuple[bytes, bytes]]:
    """The ``x-ratelimit-*`` headers of an admitted request (none without limits)."""
    if admission is None or not admission.checks:
        return []
    return rate_headers(admission.used, admission.checks, now)
