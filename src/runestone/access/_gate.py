"""The HTTP layer's one pair of calls: ``admit`` before anything goes upstream, ``settle``
when the request is over, whatever happened to it.

``admit`` refuses (model not allowed, rate limited, budget spent) or returns an
``Admission`` holding what the request took: its place in the rate windows, a parallel
slot, its budget reservation. ``settle`` gives the slot and the reservation back and
books what the request really used. Both go to the store in batches: one ``sync`` for
every request that arrived or finished in the same turn of the event loop, so that a
busy gateway makes one transaction (or one Redis round trip) for many requests. Until a
settlement is written its reservations still stand: a batch can only overcount.
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

from runestone.access._limits import Plan, reservation, worst_price
from runestone.access._report import usage_report
from runestone.access._store import (
    Addition,
    Check,
    Decision,
    LedgerEntry,
    Request,
    Settlement,
    StateError,
    Store,
)
from runestone.access._windows import iso, window
from runestone.aliases import AccessTable, AliasTable, KeySpec, TeamSpec
from runestone.errors import GatewayError, error_for
from runestone.pricing import Price

log = logging.getLogger("runestone.access")

#: Settlements kept for a store that is down, before the oldest are given up (and logged).
MAX_PENDING = 100_000
_RETRY_SECONDS = 1.0
_PRICES_KEPT = 1000


@dataclass(slots=True)
class Admission:
    """What one admitted request holds, until ``settle``."""

    key: KeySpec
    team: TeamSpec | None
    lease: str
    plan: Plan
    checks: tuple[Check, ...]
    used: Mapping[str, float]


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
        self._waiting: list[tuple[Request, asyncio.Future[Decision]]] = []
        self._flushing: asyncio.Task[None] | None = None
        self.last_state_error: str | None = None
        # Per alias table: each key's plan, each model's worst price (by identity: the
        # table holds the objects, and a reload brings a new table).
        self._table: AliasTable | None = None
        self._plans: dict[int, Plan] = {}
        self._prices: dict[str, Price | None] = {}
        self._day: tuple[float, float, str] = (0.0, 0.0, "")

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
        if table is not self._table:
            self._table, self._plans, self._prices = table, {}, {}
        plan = self._plans.get(id(key))
        if plan is None:
            plan = self._plans[id(key)] = Plan.of(key, team)
        if not plan.limits:
            return Admission(key, team, request_id, plan, (), {})
        now = self.clock()
        reserve = 0.0
        if plan.budgets:
            if model in self._prices:
                price = self._prices[model]
            else:
                if len(self._prices) >= _PRICES_KEPT:  # names are the clients' to choose
                    self._prices.clear()
                price = self._prices[model] = worst_price(model, table)
            default = access.settings.default_reservation_usd
            reserve = reservation(price, body_bytes, body, default)
        checks = plan.checks(now, reserve)
        request = Request(checks, request_id, now + access.settings.reservation_ttl)
        decided = asyncio.get_running_loop().create_future()
        self._waiting.append((request, decided))
        self._kick()
        try:
            decision = await decided
        except StateError as exc:  # counted once per batch, where the sync failed
            return self._without_store(key, team, request_id, plan, access, exc)
        if decision.refused is not None:
            raise _refusal(decision, key, team, now)
        return Admission(key, team, request_id, plan, checks, decision.used)

    def _without_store(
        self,
        key: KeySpec,
        team: TeamSpec | None,
        request_id: str,
        plan: Plan,
        access: AccessTable,
        exc: StateError,
    ) -> Admission:
        settings = access.settings
        budgets = plan.budgets
        limits = any(limit.kind != "budget" for limit in plan.limits)
        if (budgets and settings.budgets_on_state_error == "closed") or (
            limits and settings.limits_on_state_error == "closed"
        ):
            raise error_for(
                "state_unavailable",
                "the store of limits and budgets cannot be reached, and this key's limits "
                "are configured to refuse requests then (access: on_state_error)",
                retry_after=_RETRY_SECONDS,
            ) from exc
        return Admission(key, team, request_id, plan, (), {})  # admitted without the store

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
        if admission.checks:
            plan = admission.plan
            # What was used goes to the window it is used in, maybe a new one.
            if tokens:
                for limit in plan.token_limits:
                    span = window(limit.period, limit.rolling, now)
                    additions.append(Addition(limit.counter, span.bucket, tokens, span.keep))
            if cost:
                for limit in plan.budget_limits:
                    span = window(limit.period, limit.rolling, now)
                    additions.append(Addition(limit.counter, span.bucket, cost, span.keep))
        ledger = LedgerEntry(
            self._today(now),
            admission.key.id,
            admission.team.id if admission.team else "",
            model,
            input_tokens or 0,
            output_tokens or 0,
            cost or 0.0,
        )
        holds = admission.plan.holds if admission.checks else ()
        self._pending.append(Settlement(admission.lease, holds, additions, ledger))
        self._kick()

    def _today(self, now: float) -> str:
        start, end, day = self._day
        if not start <= now < end:
            span = window("day", False, now)
            day = dt.datetime.fromtimestamp(now, dt.UTC).date().isoformat()
            self._day = (span.bucket, span.resets, day)
        return day

    def _kick(self) -> None:
        # A task starts in the next turn of the loop: what arrives in this one joins it.
        if self._flushing is None and (self._pending or self._waiting):
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._pending or self._waiting:
                settling, self._pending = self._pending, []
                waiting, self._waiting = self._waiting, []
                try:
                    decisions = await self.store.sync(
                        settling, [request for request, _ in waiting], self.clock()
                    )
                except StateError as exc:
                    self._state_failed(exc)
                    for _, decided in waiting:
                        if not decided.done():
                            decided.set_exception(exc)
                    self._keep(settling)
                    if not self._waiting:  # only settlements left: try them again later
                        loop = asyncio.get_running_loop()
                        loop.call_later(_RETRY_SECONDS, self._kick)
                        return
                    continue
                except Exception as exc:  # a bug: no request may wait for ever on it
                    log.exception("limits store: %d settlements lost", len(settling))
                    for _, decided in waiting:
                        if not decided.done():
                            decided.set_exception(exc)
                    continue
                for (request, decided), decision in zip(waiting, decisions, strict=True):
                    if not decided.done():
                        decided.set_result(decision)
                    elif decision.refused is None:  # its client left while it waited
                        holds = tuple(c.counter for c in request.checks if c.mode == "lease")
                        self._pending.append(Settlement(request.lease, holds))
        finally:
            self._flushing = None

    def _keep(self, settling: list[Settlement]) -> None:
        """Settlements the store did not take: tried again with the next batch."""
        self._pending[:0] = settling
        if len(self._pending) > MAX_PENDING:
            dropped = len(self._pending) - MAX_PENDING
            del self._pending[:dropped]
            log.error("limits store down: %d settlements given up", dropped)

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
    error.headers = rate_headers(decision.used, (check,), now, refused=True)
    return error


def rate_headers(
    used: Mapping[str, float], checks: tuple[Check, ...], now: float, *, refused: bool = False
) -> list[tuple[bytes, bytes]]:
    """OpenAI's ``x-ratelimit-*`` headers for the tightest requests and tokens limits."""
    requests: tuple[float, Check] | None = None
    tokens: tuple[float, Check] | None = None
    for check in checks:
        mode = check.mode
        if mode == "count":  # requests per minute: this one is counted already
            left = check.limit - used.get(check.counter, 0.0) - (0 if refused else 1)
            if requests is None or left < requests[0]:
                requests = (left, check)
        elif mode == "level":  # tokens per minute
            left = check.limit - used.get(check.counter, 0.0)
            if tokens is None or left < tokens[0]:
                tokens = (left, check)
    headers: list[tuple[bytes, bytes]] = []
    for name, tightest in ((b"requests", requests), (b"tokens", tokens)):
        if tightest is not None:
            left, check = tightest
            headers += (
                (b"x-ratelimit-limit-" + name, b"%d" % check.limit),
                (b"x-ratelimit-remaining-" + name, b"%d" % max(left, 0)),
                (b"x-ratelimit-reset-" + name, b"%ds" % math.ceil(max(check.resets - now, 0))),
            )
    return headers
