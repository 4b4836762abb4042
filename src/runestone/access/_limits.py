"""A request's limits as store checks (pure functions).

Every key and team limit becomes one ``Check``; the counters are named
``k:<key id>:<limit>`` and ``t:<team id>:<limit>``, so a key's and its team's limits
are checked together, in one atomic step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from runestone.access._store import Check, Mode
from runestone.access._windows import window
from runestone.aliases import KeySpec, Limits, TeamSpec
from runestone.aliases._keys import Period

#: A parallel-slot refusal: one in flight will soon end.
PARALLEL_RETRY_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit of a key or a team, as a counter in the store."""

    counter: str  # k:<key id>:<name> or t:<team id>:<name>
    limit: float
    kind: Literal["rpm", "tpm", "parallel", "budget"]
    period: Period = "minute"
    rolling: bool = False
    #: A budget's alert thresholds (shares of ``limit``).
    alerts: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class Plan:
    """Every limit a key's request meets (its own and its team's), worked out once per
    alias table rather than per request."""

    limits: tuple[Limit, ...]
    holds: tuple[str, ...]  # the counters whose leases an admitted request holds
    budgets: bool
    #: What settling books: tokens to these counters, spend to those.
    token_limits: tuple[Limit, ...] = ()
    budget_limits: tuple[Limit, ...] = ()
    budget_counters: frozenset[str] = frozenset()
    #: The checks of the current windows (from, until, checks): every request in the
    #: same windows has the same, but for the budgets' reservations.
    _current: list[tuple[float, float, tuple[Check, ...]]] = field(default_factory=list)

    @classmethod
    def of(cls, key: KeySpec, team: TeamSpec | None, end_user: str | None = None) -> Plan:
        """The key's plan; with ``end_user``, its end-user budget too (if it has one)."""
        found = _limits(f"k:{key.id}", key.limits)
        if team is not None:
            found += _limits(f"t:{team.id}", team.limits)
        budget = key.end_user_budget
        if budget is not None:
            counter = f"e:{key.id}:{end_user or '-'}:{budget.name}"
            found.append(Limit(counter, budget.usd, "budget", budget.per, budget.rolling))
        holds = tuple(lim.counter for lim in found if lim.kind in ("parallel", "budget"))
        budgets = tuple(lim for lim in found if lim.kind == "budget")
        tokens = tuple(lim for lim in found if lim.kind == "tpm")
        counters = frozenset(lim.counter for lim in budgets)
        return cls(tuple(found), holds, bool(budgets), tokens, budgets, counters)

    def checks(self, now: float, reserve: float) -> tuple[Check, ...]:
        current = self._current
        if not current or not current[0][0] <= now < current[0][1]:
            made = tuple(_check(limit, now, 0.0) for limit in self.limits)
            windows = [window(lim.period, lim.rolling, now) for lim in self.limits]
            start = max((w.bucket for w in windows), default=now)
            until = min((w.resets for w in windows), default=now + 1.0)
            current[:] = [(start, until, made)]
        checks = current[0][2]
        if not self.budgets:
            return checks
        return tuple(
            Check(c.counter, c.limit, reserve, c.mode, c.since, c.bucket, True, c.resets, c.keep)
            if c.mode == "lease" and c.since is not None
            else c
            for c in checks
        )


def _limits(scope: str, limits: Limits) -> list[Limit]:
    found = []
    if limits.rpm:
        found.append(Limit(f"{scope}:rpm", limits.rpm, "rpm"))
    if limits.tpm:
        found.append(Limit(f"{scope}:tpm", limits.tpm, "tpm"))
    if limits.max_parallel:
        found.append(Limit(f"{scope}:parallel", limits.max_parallel, "parallel"))
    for budget in limits.budgets:
        found.append(
            Limit(
                f"{scope}:{budget.name}",
                budget.usd,
                "budget",
                budget.per,
                budget.rolling,
                budget.alerts,
            )
        )
    return found


def _check(limit: Limit, now: float, reserve: float) -> Check:
    kind = limit.kind
    if kind == "parallel":
        return Check(
            limit.counter,
            limit.limit,
            1,
            "lease",
            leases=True,
            resets=now + PARALLEL_RETRY_SECONDS,
        )
    span = window(limit.period, limit.rolling, now)
    if kind == "budget":
        return Check(
            limit.counter,
            limit.limit,
            reserve,
            "lease",
            span.since,
            span.bucket,
            True,
            span.resets,
            span.keep,
        )
    mode: Mode = "count" if kind == "rpm" else "level"
    return Check(
        limit.counter, limit.limit, 1, mode, span.since, span.bucket, False, span.resets, span.keep
    )


def checks_for(scope: str, limits: Limits, now: float, reserve: float) -> list[Check]:
    """The checks for one key's or team's limits (``scope`` is ``k:id`` or ``t:id``)."""
    return [_check(limit, now, reserve) for limit in _limits(scope, limits)]
