"""The HTTP layer's one pair of calls: ``admit`` before anything goes upstream, ``settle``
when the request is over, whatever happened to it.

``admit`` refuses (model not allowed, rate limited, budget spent) or returns an
``Admission`` holding what the request took: its place in the rate windows, a parallel
slot, its budget reservation. ``settle`` gives the slot and the reservation back and
books what the request really used. Settlements are written in batches, one store call
for all the requests that finished in the same turn of the event loop; until written,
their reservations still stand, so a batch delays nothing but can only overcount.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from runestone.access._limits import checks_for, reservation, worst_price
from runestone.access._report import usage_report
from runestone.access._store import (
    Addition,
    Check,
    Decision,
    LedgerEntry,
    Settlement,
    StateError,
    Store,
)
from runestone.access._windows import Window, iso, window
from runestone.aliases import PERIODS, AccessTable, AliasTable, KeySpec, TeamSpec
from runestone.errors import GatewayError, error_for

log = logging.getLogger("runestone.access")

#: Settlements kept for a store that is down, before the oldest are given up (and logged).
MAX_PENDING = 100_000
_RETRY_SECONDS = 1.0


@dataclass(slots=True)
class Admission:
    """What one admitted request holds, until ``settle``."""

    key: KeySpec
    team: TeamSpec | None
    lease: str
    checks: list[Check]
    used: Mapping[str, float]
    checked: bool  # False: admitted without the store (it was down, limits fail open)

    @property
    def holds(self) -> tuple[str, ...]:
        return tuple(c.counter for c in self.checks if c.mode == "lease")


class Access:
    """Keys' and teams' limits against a ``Store``; one per process."""

    def __init__(
        self,
        store_factory: Callable[[], Store],
        on_state_error: Callable[[str], None] = lambda store: None,
    ) -> None:
        self._factory = store_factory
        self._on_state_error = on_state_error
        #: The clock of windows and expiries (epoch seconds, UTC).
        self.clock: Callable[[], float] = time.time
        self._store: Store | None = None
        self._pending: list[Settlement] = []
        self._flushing: asyncio.Task[None] | None = None
        self.state_errors = 0
        self.last_state_error: str | None = None

    @property
    def in_use(self) -> bool:
        """Whether a store has been opened (a key with limits has been seen)."""
        return self._store is not None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = self._factory()  # opened on first use: keys may arrive by reload
        return self._store

    def _state_failed(self, exc: StateError) -> None:
        self.state_errors += 1
        self._on_state_error(self._store.name if self._store is not None else "-")
        if self.last_state_error != str(exc):
            log.warning("limits store: %s", exc)
        self.last_state_error = str(exc)

    async def admit(
        self,
        key: KeySpec,
        table: AliasTable,
        model: str,
        body: Mapping[str, object],
        body_bytes: int,
        request_id: str,
    ) -> Admission:
        """Check the key's model list and every limit of the key and its team; take what
        the request needs, or raise the client's error."""
        if not key.allows(model):
            raise error_for(
                "model_not_allowed",
                f"key {key.id!r} may not use model {model!r} (allowed: {', '.join(key.models)})",
                param="model",
            )
        access = table.access
        team = access.teams.get(key.team) if key.team else None
        now = self.clock()
        reserve = 0.0
        if key.limits.budgets or (team is not None and team.limits.budgets):
            reserve = reservation(
                worst_price(model, table),
                body_bytes,
                body,
                access.settings.default_reservation_usd,
            )
        checks = checks_for(f"k:{key.id}", key.limits, now, reserve)
        if team is not None:
            checks += checks_for(f"t:{team.id}", team.limits, now, reserve)
        if not checks:
            return Admission(key, team, request_id, checks, {}, checked=True)
        expires = now + access.settings.reservation_ttl
        try:
            decision = await self.store.admit(checks, request_id, now, expires)
        except StateError as exc:
            self._state_failed(exc)
            return self._without_store(key, team, request_id, checks, access, exc)
        if decision.refused is not None:
            raise _refusal(decision, key, team, now)
        return Admission(key, team, request_id, checks, decision.used, checked=True)

    def _without_store(
        self,
        key: KeySpec,
        team: TeamSpec | None,
        request_id: str,
        checks: list[Check],
        access: AccessTable,
        exc: StateError,
    ) -> Admission:
        settings = access.settings
        budgets = any(_is_budget(c) for c in checks)
        limits = not all(_is_budget(c) for c in checks)
        if (budgets and settings.budgets_on_state_error == "closed") or (
            limits and settings.limits_on_state_error == "closed"
        ):
            raise error_for(
                "state_unavailable",
                "the store of limits and budgets cannot be reached, and this key's limits "
                "are configured to refuse requests then (access: on_state_error)",
                retry_after=_RETRY_SECONDS,
            ) from exc
        return Admission(key, team, request_id, [], {}, checked=False)

    def settle(
        self,
        admission: Admission,
        model: str,
        cost: float | None,
        input_tokens: int | None,
        output_tokens: int | None,
    ) -> None:
        """Book what the request used and release what it held (written soon, batched)."""
        now = self.clock()
        additions = []
        tokens = (input_tokens or 0) + (output_tokens or 0)
        for check in admission.checks:
            if check.counter.endswith(":tpm") and tokens:
                minute = window("minute", False, now)
                additions.append(Addition(check.counter, minute.bucket, tokens, minute.keep))
            elif cost and _is_budget(check):
                # The cost goes to the window it is spent in, which may be a new one.
                span = _budget_window(check, now)
                additions.append(Addition(check.counter, span.bucket, cost, span.keep))
        day = dt.datetime.fromtimestamp(now, dt.UTC).date().isoformat()
        ledger = LedgerEntry(
            day,
            admission.key.id,
            admission.team.id if admission.team else "",
            model,
            input_tokens or 0,
            output_tokens or 0,
            cost or 0.0,
        )
        self._pending.append(Settlement(admission.lease, admission.holds, additions, ledger))
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._pending:
                await asyncio.sleep(0)  # let the requests finishing this turn join the batch
                batch, self._pending = self._pending, []
                try:
                    await self.store.settle(batch, self.clock())
                except StateError as exc:
                    self._state_failed(exc)
                    self._pending[:0] = batch
                    if len(self._pending) > MAX_PENDING:
                        dropped = len(self._pending) - MAX_PENDING
                        del self._pending[:dropped]
                        log.error("limits store down: %d settlements given up", dropped)
                    await asyncio.sleep(_RETRY_SECONDS)
        finally:
            self._flushing = None

    async def report(self, table: AliasTable, only: str | None = None) -> dict[str, Any]:
        """Usage per key, team and model, from the store (see ``usage_report``)."""
        try:
            return await usage_report(table.access, self.store, only, self.clock())
        except StateError as exc:
            self._state_failed(exc)
            raise error_for("state_unavailable", f"cannot read usage: {exc}") from None

    async def check_store(self) -> str | None:
        """None if the store answers (or none is in use yet), else why not."""
        if self._store is None:
            return None
        try:
            await self._store.ping()
        except StateError as exc:
            return str(exc)
        return None

    async def aclose(self) -> None:
        """Write what is pending (briefly; a store that is down loses it), then close."""
        if self._flushing is not None:
            try:
                async with asyncio.timeout(2.0):
                    await asyncio.shield(self._flushing)
            except TimeoutError:
                log.error("limits store: %d settlements not written", len(self._pending))
        if self._store is not None:
            await self._store.aclose()
            self._store = None


def _is_budget(check: Check) -> bool:
    return ":usd/" in check.counter


def _budget_window(check: Check, now: float) -> Window:
    name = check.counter.rpartition(":usd/")[2]  # "day", or "day~" when rolling
    per = name.rstrip("~")
    assert per in PERIODS
    return window(per, name.endswith("~"), now)


def _refusal(decision: Decision, key: KeySpec, team: TeamSpec | None, now: float) -> GatewayError:
    check = decision.refused
    assert check is not None
    owner = f"key {key.id!r}"
    if check.counter.startswith("t:") and team is not None:
        owner = f"team {team.id!r} (of key {key.id!r})"
    limit = check.counter.rpartition(":")[2]
    wait = max(check.resets - now, 0.0)
    used = decision.used.get(check.counter, 0.0)
    if limit.startswith("usd/"):
        error = error_for(
            "budget_exceeded",
            f"{owner} has spent ${used:.4f} of its ${check.limit:g} budget per "
            f"{limit[4:].rstrip('~')}{' (rolling)' if limit.endswith('~') else ''}, with "
            f"this request's reservation of ${check.amount:.4f} it would go over; the "
            f"budget resets at {iso(check.resets)}",
            retry_after=math.ceil(wait),
        )
        return error
    what = {"rpm": "requests per minute", "tpm": "tokens per minute"}.get(
        limit, "requests in flight"
    )
    error = error_for(
        "rate_limited",
        f"{owner} is at its limit of {check.limit:g} {what}; retry after {math.ceil(wait)}s",
        retry_after=max(math.ceil(wait), 1),
    )
    error.headers = rate_headers(decision.used, [check], now, refused=True)
    return error


def rate_headers(
    used: Mapping[str, float], checks: list[Check], now: float, *, refused: bool = False
) -> list[tuple[bytes, bytes]]:
    """OpenAI's ``x-ratelimit-*`` headers for the tightest requests and tokens limits."""
    headers: list[tuple[bytes, bytes]] = []
    for suffix, name in ((":rpm", b"requests"), (":tpm", b"tokens")):
        tightest: tuple[float, Check] | None = None
        for check in checks:
            if check.counter.endswith(suffix):
                taken = 0 if refused or suffix == ":tpm" else check.amount
                left = check.limit - used.get(check.counter, 0.0) - taken
                if tightest is None or left < tightest[0]:
                    tightest = (left, check)
        if tightest is not None:
            left, check = tightest
            headers += (
                (b"x-ratelimit-limit-" + name, b"%d" % check.limit),
                (b"x-ratelimit-remaining-" + name, b"%d" % max(left, 0)),
                (b"x-ratelimit-reset-" + name, b"%ds" % math.ceil(max(check.resets - now, 0))),
            )
    return headers
