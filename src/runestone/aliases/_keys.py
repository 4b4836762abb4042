"""Who may call: client keys, teams, their limits and budgets (the types).

Parsed from the alias file by ``_access_section``; read by ``runestone.access``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Literal

Period = Literal["minute", "hour", "day", "week", "month"]
PERIODS: tuple[Period, ...] = ("minute", "hour", "day", "week", "month")
StateErrorMode = Literal["open", "closed"]
#: What a target that cannot run a provider's hosted tools (web search, ...) does with a
#: request that offers them: leave them out (and say so), or refuse it.
HostedTools = Literal["drop", "refuse"]
#: What a key may do besides calling models: ``admin`` manages every key and team (as the
#: operators' token does), ``team_admin`` the keys of its own team; ``client`` only itself.
Role = Literal["client", "team_admin", "admin"]
ROLES: tuple[Role, ...] = ("client", "team_admin", "admin")
#: Where a key or team was declared: the alias file (read-only through the API), or the API.
Source = Literal["file", "api"]
#: The shares of a budget at which its alerts go out, unless the budget names its own.
DEFAULT_ALERTS = (0.5, 0.8, 1.0)


CacheScope = Literal["key", "team", "global"]
CACHE_SCOPES: tuple[CacheScope, ...] = ("key", "team", "global")


@dataclass(frozen=True, slots=True)
class CacheSpec:
    """The exact response cache, for an alias or a key: answers kept ``ttl`` seconds,
    shared by the requests of one key (``scope``: or of its team, or of everyone); a
    request with ``temperature`` above 0 is not served from it unless ``temperature``."""

    ttl: float
    scope: CacheScope = "key"
    temperature: bool = False


@dataclass(frozen=True, slots=True)
class Budget:
    """At most ``usd`` spent per calendar ``per`` (UTC), or per rolling ``per``."""

    usd: float
    per: Period
    rolling: bool = False
    #: Shares of ``usd`` (0 < share <= 1) at which an alert goes out, once per window.
    alerts: tuple[float, ...] = DEFAULT_ALERTS

    @property
    def name(self) -> str:
        return f"usd/{self.per}{'~' if self.rolling else ''}"


@dataclass(frozen=True, slots=True)
class Limits:
    """What a key or a team may use; ``None`` is no limit."""

    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    budgets: tuple[Budget, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.rpm or self.tpm or self.max_parallel or self.budgets)


@dataclass(frozen=True, slots=True)
class TeamSpec:
    id: str
    limits: Limits
    line: int = 0
    blocked: bool = False
    source: Source = "file"
    #: The guards its keys' requests pass through.
    guards: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One client key: its id (for logs, metrics and usage), never the key itself."""

    id: str
    digest: str  # hex SHA-256 of the key
    limits: Limits
    models: tuple[str, ...] = ()  # names or globs it may use; empty: every model
    expires: dt.date | None = None  # usable through this day (UTC)
    team: str | None = None
    line: int = 0
    hosted_tools: HostedTools = "drop"
    role: Role = "client"
    blocked: bool = False
    source: Source = "file"
    #: A rotated key's old secret works until then (epoch seconds); None: no such end.
    not_after: float | None = None
    #: At most this much spent per end user of the key (``user``, ``metadata.user_id``).
    end_user_budget: Budget | None = None
    #: Its requests' answers are cached (unless their alias says how).
    cache: CacheSpec | None = None
    #: The guards its requests pass through (besides its alias's and its team's).
    guards: tuple[str, ...] = ()

    def allows(self, model: str) -> bool:
        return not self.models or any(fnmatchcase(model, allowed) for allowed in self.models)

    def expired(self, today: dt.date) -> bool:
        return self.expires is not None and today > self.expires


@dataclass(frozen=True, slots=True)
class AccessSettings:
    """What to do when the counters' store cannot be reached, and how much to reserve."""

    budgets_on_state_error: StateErrorMode = "closed"
    limits_on_state_error: StateErrorMode = "open"
    #: Reserved against budgets when a request's worst case cannot be worked out (no
    #: max_tokens, or no price for its target).
    default_reservation_usd: float = 0.05
    #: A reservation not settled within this many seconds (its gateway crashed) expires.
    reservation_ttl: float = 3600.0


@dataclass(frozen=True, slots=True)
class AccessTable:
    """The keys by digest, the teams by id, and the settings, from one alias file."""

    keys: Mapping[str, KeySpec] = field(default_factory=lambda: MappingProxyType({}))
    teams: Mapping[str, TeamSpec] = field(default_factory=lambda: MappingProxyType({}))
    settings: AccessSettings = AccessSettings()

    def by_id(self, key_id: str) -> KeySpec | None:
        return next((k for k in self.keys.values() if k.id == key_id), None)


NO_ACCESS = AccessTable()
