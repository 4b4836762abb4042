"""The exchange's one pair of calls: ``admit`` before anything goes upstream, ``settle``
when the request is over, whatever happened to it.

``admit`` refuses (model not allowed, rate limited, budget spent) or returns an
``Admission`` holding what the request took: its place in the rate windows, a parallel
slot, its budget reservation, all under a lease id the gateway makes (unguessable, never
anything a client sent). ``settle`` gives the slot and the reservation back and books
what the request used (``_booking``). Both go to the store in batches: one ``sync`` for
every request that arrived or finished in the same turn of the event loop, so that a
busy gateway makes one transaction (or one Redis round trip) for many requests. Until a
settlement is written its reservations still stand: a batch can only overcount.

No request waits on the store longer than ``STORE_TIMEOUT``: past it, the request is
handled by ``on_state_error``, and if the store admitted it after all, what it took is
given back with the next batch.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from runestone.access._admission import Admission, new_lease
from runestone.access._attribution import Names
from runestone.access._booking import NOTHING, LedgerNames, Spent, booking
from runestone.access._limits import Limit, Plan
from runestone.access._refusals import refusal
from runestone.access._report import usage_report
from runestone.access._store import (
    MAX_AMOUNT,
    STORE_TIMEOUT,
    Addition,
    Decision,
    LedgerEntry,
    Request,
    Settlement,
    StateError,
    Store,
)
from runestone.access._windows import window
from runestone.access._worst_case import Bound, worst_case, worst_price
from runestone.aliases import AliasTable, KeySpec, TeamSpec
from runestone.errors import error_for
from runestone.pricing import Price

log = logging.getLogger("runestone.access")

#: Settlements kept for a store that is down, before the oldest are given up (and logged).
MAX_PENDING = 100_000
_RETRY_SECONDS = 1.0
_PRICES_KEPT = 1000


def check_model(key: KeySpec, model: str) -> None:
    """Raise the client's error unless ``key`` may use ``model``."""
    if not key.allows(model):
        raise error_for(
            "model_not_allowed",
            f"key {key.id!r} may not use model {model!r} (allowed: {', '.join(key.models)})",
            param="model",
        )


class Access:
    """Keys' and teams' limits against a ``Store``; one per process."""

    def __init__(
        self,
        store_factory: Callable[[], Store],
        on_state_error: Callable[[str], None] = lambda store: None,
        *,
        store_name: str = "sqlite",
    ) -> None:
        self._factory = store_factory
        #: The kind of store the factory opens ("sqlite", "redis").
        self.store_name = store_name
        self._on_state_error = on_state_error
        #: The clock of windows and expiries (epoch seconds, UTC).
        self.clock: Callable[[], float] = time.time
        self._store: Store | None = None
        #: Why the store could not be opened, and when to try again.
        self._open_error: tuple[str, float] | None = None
        self._pending: list[Settlement] = []
        self._waiting: list[tuple[Request, asyncio.Future[Decision]]] = []
        self._flushing: asyncio.Task[None] | None = None
        self.last_state_error: str | None = None
        # Per alias table: each key's plan, each model's worst price (by identity: the
        # table holds the objects, and a reload brings a new table).
        self._table: AliasTable | None = None
        self._plans: dict[int, Plan] = {}
        self._prices: dict[str, Price | None] = {}
        self._ledger_name = LedgerNames()
        self._names = Names()
        self._end_user_plans: dict[tuple[int, str | None], Plan] = {}
        #: Told of each budget's use (spent and reserved) after every settlement and
        #: budget refusal: (limit, used share, window start, seconds to keep, resets,
        #: whether a request was refused for it).
        self.on_budget: Callable[[Limit, float, float, float, float, bool], None] | None = None
        self._day: tuple[float, float, str] = (0.0, 0.0, "")

    @property
    def in_use(self) -> bool:
        """Whether a store has been opened, or tried (a key with limits has been seen)."""
        return self._store is not None or self._open_error is not None

    @property
    def store(self) -> Store:
        if self._store is None:
            if self._open_error is not None and time.monotonic() < self._open_error[1]:
                raise StateError(self._open_error[0])
            try:
                self._store = self._factory()  # on first use: keys may arrive by reload
            except StateError as exc:
                self._open_error = (str(exc), time.monotonic() + _RETRY_SECONDS)
                raise
            self._open_error = None
        return self._store

    def _state_failed(self, exc: StateError) -> None:
        self._on_state_error(self.store_name)
        if self.last_state_error != str(exc):
            log.warning("limits store: %s", exc)
        self.last_state_error = str(exc)

    async def admit(
        self,
        key: KeySpec,
        table: AliasTable,
        model: str,
        body: Mapping[str, object],
        raw: bytes,
        end_user: str | None = None,
        tags: tuple[str, ...] = (),
    ) -> Admission:
        """Check the key's model list and every limit of the key and its team (and of
        the end user, if the key budgets them); take what the request needs, or raise
        the client's error."""
        check_model(key, model)
        access = table.access
        team = access.teams.get(key.team) if key.team else None
        if table is not self._table:
            self._table, self._plans, self._prices = table, {}, {}
            self._end_user_plans = {}
        if key.end_user_budget is None:
            plan = self._plans.get(id(key))
            if plan is None:
                plan = self._plans[id(key)] = Plan.of(key, team)
        else:
            plan = self._end_user_plan(key, team, end_user)
        bound = worst_case(body, raw)
        price = self._price(model, table)
        lease = new_lease()
        if not plan.limits:
            return Admission(key, team, table, lease, plan, (), {}, bound, price, end_user, tags)
        now = self.clock()
        reserve = bound.cost(price, access.settings.default_reservation_usd)
        checks = plan.checks(now, min(reserve, MAX_AMOUNT) if plan.budgets else 0.0)
        request = Request(checks, lease, now + access.settings.reservation_ttl)
        decided = asyncio.get_running_loop().create_future()
        self._waiting.append((request, decided))
        self._kick()
        try:
            # A store that hangs must not hold the request: past the timeout the future
            # is cancelled, and an admission that comes after all is given back.
            decision = await asyncio.wait_for(decided, STORE_TIMEOUT)
        except (StateError, TimeoutError) as exc:  # a failure is counted once per batch
            error = exc if isinstance(exc, StateError) else _no_answer(self._store)
            return self._without_store(key, team, table, lease, plan, bound, price, error)
        if decision.refused is not None:
            refused = decision.refused
            if refused.counter in plan.budget_counters and self.on_budget is not None:
                used = decision.used.get(refused.counter, 0.0)
                for limit in plan.budget_limits:
                    if limit.counter == refused.counter:  # no request fits: its 100% alert
                        self._tell_budget(limit, used, 0.0, now, exhausted=True)
            raise refusal(decision, key, team, now)
        return Admission(
            key, team, table, lease, plan, checks, decision.used, bound, price, end_user, tags
        )

    def _end_user_plan(self, key: KeySpec, team: TeamSpec | None, end_user: str | None) -> Plan:
        plans = self._end_user_plans
        plan = plans.get((id(key), end_user))
        if plan is None:
            if len(plans) >= _PRICES_KEPT * 10:  # end users are the clients' to name
                plans.clear()
            plan = plans[(id(key), end_user)] = Plan.of(key, team, end_user)
        return plan

    def _tell_budget(
        self, limit: Limit, used: float, extra: float, now: float, *, exhausted: bool = False
    ) -> None:
        """A budget's use after a request, to ``on_budget`` (alerts and the gauge);
        ``exhausted``: a request was refused for it."""
        assert self.on_budget is not None
        span = window(limit.period, limit.rolling, now)
        share = (used + extra) / limit.limit
        self.on_budget(limit, share, span.bucket, span.keep, span.resets, exhausted)

    def _price(self, model: str, table: AliasTable) -> Price | None:
        if model in self._prices:
            return self._prices[model]
        if len(self._prices) >= _PRICES_KEPT:  # names are the clients' to choose
            self._prices.clear()
        price = self._prices[model] = worst_price(model, table)
        return price

    def _without_store(
        self,
        key: KeySpec,
        team: TeamSpec | None,
        table: AliasTable,
        lease: str,
        plan: Plan,
        bound: Bound,
        price: Price | None,
        exc: StateError,
    ) -> Admission:
        settings = table.access.settings
        budgets = plan.budgets
        limits = any(limit.kind != "budget" for limit in plan.limits)
        if (budgets and settings.budgets_on_state_error == "closed") or (
            limits and settings.limits_on_state_error == "closed"
        ):
            raise error_for(
                "state_unavailable",
                f"the store of limits and budgets cannot be used ({exc}), and this key's "
                "limits are configured to refuse requests then (access: on_state_error)",
                retry_after=_RETRY_SECONDS,
            ) from exc
        # Admitted without the store: it holds nothing, and still books what it uses.
        return Admission(key, team, table, lease, plan, (), {}, bound, price)

    def settle(self, admission: Admission, spent: Spent = NOTHING) -> None:
        """Book what the request used and release what it held (written soon, batched)."""
        settings = admission.table.access.settings
        booked = booking(spent, admission.bound, admission.price, settings.default_reservation_usd)
        plan = admission.plan
        holds = plan.holds if admission.checks else ()
        if booked is None:  # nothing was charged: only what it held goes back
            if holds:
                self._pending.append(Settlement(admission.lease, holds))
                self._kick()
            return
        now = self.clock()
        additions = []
        tokens = min(booked.tokens, MAX_AMOUNT)
        usd = min(booked.usd, MAX_AMOUNT)
        # What was used goes to the window it is used in, maybe a new one; a request
        # admitted without the store books its use all the same.
        if tokens:
            for limit in plan.token_limits:
                span = window(limit.period, limit.rolling, now)
                additions.append(Addition(limit.counter, span.bucket, tokens, span.keep))
        if usd:
            for limit in plan.budget_limits:
                span = window(limit.period, limit.rolling, now)
                additions.append(Addition(limit.counter, span.bucket, usd, span.keep))
            if self.on_budget is not None and admission.checks:
                for limit in plan.budget_limits:
                    self._tell_budget(limit, admission.used.get(limit.counter, 0.0), usd, now)
        if booked.estimated:
            log.info(
                "key %s: no usable usage from %s; booked the worst case, $%.6f",
                admission.key.id,
                spent.target,
                usd,
            )
        day = self._today(now)
        key_id = admission.key.id
        names = self._names
        end_user = admission.end_user
        ledger = LedgerEntry(
            day,
            key_id,
            admission.team.id if admission.team else "",
            self._ledger_name(spent.target, admission.table),
            min(booked.input_tokens, MAX_AMOUNT),
            min(booked.output_tokens, MAX_AMOUNT),
            usd,
            int(booked.estimated),
            names(day, key_id, "user", end_user) if end_user else "",
            tuple(names(day, key_id, "tag", tag) for tag in admission.tags),
        )
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
                requests = [request for request, _ in waiting]
                try:
                    decisions = await self.store.sync(settling, requests, self.clock())
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
                    log.exception("limits store: a batch of %d settlements failed", len(settling))
                    for _, decided in waiting:
                        if not decided.done():
                            decided.set_exception(exc)
                    await self._one_by_one(settling)
                    continue
                for (request, decided), decision in zip(waiting, decisions, strict=True):
                    if not decided.done():
                        decided.set_result(decision)
                    elif decision.refused is None:  # it stopped waiting: give it back
                        holds = tuple(c.counter for c in request.checks if c.mode == "lease")
                        self._pending.append(Settlement(request.lease, holds))
        finally:
            self._flushing = None

    async def _one_by_one(self, settling: list[Settlement]) -> None:
        """After a batch failed for no reason the store knows: each settlement alone, so
        that one that cannot be written costs no other its booking or its release."""
        for settlement in settling:
            try:
                await self.store.sync([settlement], [], self.clock())
            except StateError:
                self._keep([settlement])
            except Exception:
                log.exception("limits store: settlement of key %s lost", _owner(settlement))

    def _keep(self, settling: list[Settlement]) -> None:
        """Settlements the store did not take: tried again with the next batch."""
        self._pending[:0] = settling
        if len(self._pending) > MAX_PENDING:
            dropped = len(self._pending) - MAX_PENDING
            del self._pending[:dropped]
            log.error("limits store down: %d settlements given up", dropped)

    async def report(
        self, table: AliasTable, only: str | None = None, **page: Any
    ) -> dict[str, Any]:
        """Usage per key, team and model, from the store (see ``usage_report``)."""
        try:
            return await usage_report(table.access, self.store, only, self.clock(), **page)
        except StateError as exc:
            self._state_failed(exc)
            raise error_for("state_unavailable", f"cannot read usage: {exc}") from None

    async def check_store(self) -> str | None:
        """None if the store can be written (or none is in use yet), else why not."""
        if self._store is None:
            return self._open_error[0] if self._open_error is not None else None
        try:
            await self._store.check()
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


def _no_answer(store: Store | None) -> StateError:
    name = store.name if store is not None else "store"
    return StateError(f"the {name} store gave no answer within {STORE_TIMEOUT:g}s")


def _owner(settlement: Settlement) -> str:
    return settlement.ledger.key if settlement.ledger is not None else "-"
