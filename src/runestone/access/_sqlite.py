"""The embedded store: one SQLite file in WAL mode, shared by the processes of one host.

A ``sync`` is one ``BEGIN IMMEDIATE`` transaction, which takes SQLite's write lock
first, so checking and taking are atomic across ``runestone serve --workers N``. Inside
it the checks are read from a mirror of the file kept in memory, which is exact as long
as no other process has committed since (``PRAGMA data_version`` says so; when one has,
the mirror is dropped and read again). So a batch of requests costs a few statements,
not a few per limit: the writes are one ``executemany`` per table, with the rows of the
same counter and window summed first.

Leases are held per process, not per request: one row per process and counter with
the sum its requests in flight hold, expiring with the latest of them (so a process that
dies frees what it held after ``reservation_ttl``). Which request holds what is known
only to its own process, which is all that releasing needs.

The calls are synchronous on the event loop: a transaction takes tens of microseconds,
less than a hop to a thread and back would cost; a lock held too long by another
process fails after ``busy_timeout`` rather than hang the request.
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Sequence
from pathlib import Path

from runestone.access._store import (
    Check,
    Decision,
    Request,
    Settlement,
    StateError,
    UsageRow,
)

_SCHEMA = """
create table if not exists buckets (
    counter text not null, start real not null, amount real not null, expires real not null,
    primary key (counter, start)) without rowid;
create table if not exists holds (
    process text not null, counter text not null, amount real not null, expires real not null,
    primary key (process, counter)) without rowid;
create table if not exists ledger (
    day text not null, key text not null, team text not null, model text not null,
    requests integer not null, input_tokens integer not null, output_tokens integer not null,
    usd real not null, primary key (day, key, team, model)) without rowid;
"""

_ADD = (
    "insert into buckets values (?, ?, ?, ?) on conflict do update set "
    "amount = amount + excluded.amount, expires = max(expires, excluded.expires)"
)
_HOLD = (
    "insert into holds values (?, ?, ?, ?) on conflict do update set "
    "amount = excluded.amount, expires = max(expires, excluded.expires)"
)
_LEDGER = (
    "insert into ledger values (?, ?, ?, ?, ?, ?, ?, ?) on conflict do update set "
    "requests = requests + excluded.requests, "
    "input_tokens = input_tokens + excluded.input_tokens, "
    "output_tokens = output_tokens + excluded.output_tokens, usd = usd + excluded.usd"
)
_SWEEP_EVERY = 60.0

Parts = tuple[tuple[str, float], ...]


class SQLiteStore:
    name = "sqlite"

    def __init__(self, path: Path | str, *, busy_timeout: float = 0.25) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._db.execute("pragma journal_mode = wal")
            # Durable against a crash of the process (WAL); an OS crash may lose the last
            # commits, which reservations' expiry then makes good.
            self._db.execute("pragma synchronous = normal")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"cannot open the state file {self.path}: {exc}") from None
        self._swept = 0.0
        self._process = uuid.uuid4().hex  # this process's rows in ``holds``
        # The mirror: valid while the file's data_version is the one read with it.
        self._version: int | None = None
        self._buckets: dict[str, dict[float, float]] = {}
        self._others: dict[str, float] = {}  # what other processes hold, per counter
        self._others_expire = float("inf")  # when the first of those rows runs out
        # What this process's requests hold: per counter, and per request.
        self._mine: dict[str, float] = {}
        self._mine_expires: dict[str, float] = {}
        self._parts: dict[str, Parts] = {}

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.path}>"

    def _error(self, exc: sqlite3.Error) -> StateError:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("rollback")
        self._version = None  # the mirror may hold what was rolled back
        return StateError(f"state file {self.path}: {exc}")

    # --- the mirror ----------------------------------------------------------------------

    def _refresh(self, now: float) -> None:
        version = self._db.execute("pragma data_version").fetchone()[0]
        if version == self._version and now < self._others_expire:
            return
        self._version = version
        self._buckets.clear()
        self._others.clear()
        self._others_expire = float("inf")
        rows = self._db.execute(
            "select counter, amount, expires from holds where process != ? and expires > ?",
            (self._process, now),
        )
        others = self._others
        for counter, amount, expires in rows:
            others[counter] = others.get(counter, 0.0) + amount
            self._others_expire = min(self._others_expire, expires)

    def _bucket(self, counter: str) -> dict[float, float]:
        buckets = self._buckets.get(counter)
        if buckets is None:
            rows = self._db.execute(
                "select start, amount from buckets where counter = ?", (counter,)
            )
            buckets = self._buckets[counter] = {start: amount for start, amount in rows}
        return buckets

    def _used(self, check: Check) -> float:
        used = 0.0
        since = check.since
        if since is not None:
            buckets = self._buckets.get(check.counter) or self._bucket(check.counter)
            stale = None
            for start, amount in buckets.items():
                if start >= since:
                    used += amount
                else:
                    stale = start
            if stale is not None:  # out of its window for good: a counter keeps its period
                for start in [s for s in buckets if s < since]:
                    del buckets[start]
        if check.leases:
            counter = check.counter
            used += self._mine.get(counter, 0.0) + self._others.get(counter, 0.0)
        return used

    # --- the store -----------------------------------------------------------------------

    async def sync(
        self, settlements: Sequence[Settlement], requests: Sequence[Request], now: float
    ) -> list[Decision]:
        db = self._db
        released: list[tuple[str, Parts]] = []
        taken: list[str] = []
        try:
            db.execute("begin immediate")
            self._refresh(now)
            adds: dict[tuple[str, float], list[float]] = {}
            changed: set[str] = set()
            ledger: dict[tuple[str, str, str, str], list[float]] = {}
            mine = self._mine
            for settled in settlements:
                parts = self._parts.pop(settled.lease, None)
                if parts is not None:
                    released.append((settled.lease, parts))
                    for counter, amount in parts:
                        mine[counter] -= amount
                        changed.add(counter)
                for added in settled.additions:
                    self._add(adds, added.counter, added.bucket, added.amount, added.keep)
                entry = settled.ledger
                if entry is not None:
                    where = (entry.day, entry.key, entry.team, entry.model)
                    row = ledger.setdefault(where, [0, 0, 0, 0.0])
                    row[0] += 1
                    row[1] += entry.input_tokens
                    row[2] += entry.output_tokens
                    row[3] += entry.usd
            decisions = [self._admit(request, adds, changed, taken) for request in requests]
            if changed:
                process, expiry = self._process, self._mine_expires
                db.executemany(_HOLD, [(process, c, mine[c], expiry.get(c, now)) for c in changed])
            if adds:
                db.executemany(_ADD, [(c, s, a, e) for (c, s), (a, e) in adds.items()])
            if ledger:
                db.executemany(_LEDGER, [(*k, *v) for k, v in ledger.items()])
            if now - self._swept > _SWEEP_EVERY:
                self._swept = now
                db.execute("delete from buckets where expires < ?", (now,))
                db.execute("delete from holds where expires < ?", (now,))
            db.execute("commit")
            return decisions
        except sqlite3.Error as exc:
            self._undo(released, taken)
            raise self._error(exc) from None

    def _undo(self, released: list[tuple[str, Parts]], taken: list[str]) -> None:
        """What this process holds, as before a sync that did not commit."""
        mine = self._mine
        for lease in taken:
            for counter, amount in self._parts.pop(lease, ()):
                mine[counter] -= amount
        for lease, parts in released:
            self._parts[lease] = parts
            for counter, amount in parts:
                mine[counter] += amount

    def _add(
        self,
        adds: dict[tuple[str, float], list[float]],
        counter: str,
        start: float,
        amount: float,
        keep: float,
    ) -> None:
        buckets = self._buckets.get(counter) or self._bucket(counter)
        buckets[start] = buckets.get(start, 0.0) + amount
        row = adds.get((counter, start))
        if row is None:
            adds[(counter, start)] = [amount, start + keep]
        else:
            row[0] += amount

    def _admit(
        self,
        request: Request,
        adds: dict[tuple[str, float], list[float]],
        changed: set[str],
        taken: list[str],
    ) -> Decision:
        used: dict[str, float] = {}
        for check in request.checks:
            used[check.counter] = amount = self._used(check)
            if amount + check.amount > check.limit:
                return Decision(check, used)
        parts = []
        mine, expiry = self._mine, self._mine_expires
        for check in request.checks:
            mode = check.mode
            if mode == "count":
                self._add(adds, check.counter, check.bucket, check.amount, check.keep)
            elif mode == "lease":
                counter = check.counter
                parts.append((counter, check.amount))
                mine[counter] = mine.get(counter, 0.0) + check.amount
                if expiry.get(counter, 0.0) < request.expires:
                    expiry[counter] = request.expires
                changed.add(counter)
        if parts:
            self._parts[request.lease] = tuple(parts)
            taken.append(request.lease)
        return Decision(None, used)

    async def used(self, checks: Sequence[Check], now: float) -> dict[str, float]:
        db = self._db
        try:
            db.execute("begin")
            try:
                self._refresh(now)
                return {check.counter: self._used(check) for check in checks}
            finally:
                db.execute("commit")
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    async def usage(self, since_day: str) -> list[UsageRow]:
        try:
            rows = self._db.execute(
                "select * from ledger where day >= ? order by day, key, model", (since_day,)
            ).fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        return [UsageRow(*row) for row in rows]

    async def ping(self) -> None:
        try:
            self._db.execute("select 1").fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    async def aclose(self) -> None:
        self._db.close()
