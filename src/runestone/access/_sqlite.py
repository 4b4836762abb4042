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

Every call runs on one thread of the store's own, never on the event loop: a write lock
held by another process (a backup, a ``sqlite3`` shell) makes the store wait up to
``busy_timeout`` and then fail, and meanwhile the gateway serves everything else. One
thread also keeps the mirror's reads and writes in order without a lock.

The WAL index (the ``-shm`` file) is memory-mapped by SQLite: if something else cuts
that file short, the next access to the mapping would kill the process with SIGBUS.
Before each transaction the store checks the file's size and, if it shrank, restores it
(SQLite then rebuilds the index from the WAL), so a damaged index costs a rebuild, not
the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from runestone.access._sqlite_schema import ADD, HOLD, LEDGER, SCHEMA, SPEND_BY, USAGE
from runestone.access._store import (
    STORE_TIMEOUT,
    Check,
    Decision,
    Request,
    Settlement,
    SpendRow,
    StateError,
    UsageRow,
    spend_names,
)

T = TypeVar("T")

_SWEEP_EVERY = 60.0

Parts = tuple[tuple[str, float], ...]


class SQLiteStore:
    name = "sqlite"

    def __init__(self, path: Path | str, *, busy_timeout: float = STORE_TIMEOUT / 2) -> None:
        self.path = Path(path)
        self._shm = Path(f"{self.path}-shm")
        self._shm_size = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._db.execute("pragma journal_mode = wal")
            # Durable against a crash of the process (WAL); an OS crash may lose the last
            # commits, which reservations' expiry then makes good.
            self._db.execute("pragma synchronous = normal")
            self._db.executescript(SCHEMA)
            columns = {row[1] for row in self._db.execute("pragma table_info(ledger)")}
            if "estimated" not in columns:  # a state file of an earlier version
                self._db.execute(
                    "alter table ledger add column estimated integer not null default 0"
                )
            self._identity = _identity(self.path)
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"cannot open the state file {self.path}: {exc}") from None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="runestone-state")
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

    async def _call(self, work: Callable[..., T], *args: object) -> T:
        """``work(*args)`` on the store's thread; the event loop waits without blocking."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, work, *args)

    def _keep_shm(self) -> None:
        """Restore the WAL index's size if something cut it short (see the docstring)."""
        try:
            size = os.stat(self._shm).st_size
        except OSError:
            return  # not made yet, or gone: an unlinked file stays mapped and valid
        if size < self._shm_size:
            os.truncate(self._shm, self._shm_size)
        else:
            self._shm_size = size

    def _error(self, exc: sqlite3.Error | OSError) -> StateError:
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
        return await self._call(self._sync, settlements, requests, now)

    def _sync(
        self, settlements: Sequence[Settlement], requests: Sequence[Request], now: float
    ) -> list[Decision]:
        db = self._db
        released: list[tuple[str, Parts]] = []
        taken: list[str] = []
        try:
            self._keep_shm()
            db.execute("begin immediate")
            self._refresh(now)
            adds: dict[tuple[str, float], list[float]] = {}
            changed: set[str] = set()
            ledger: dict[tuple[str, str, str, str], list[float]] = {}
            spent_by: dict[tuple[str, str, str, str], list[float]] = {}
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
                    row = ledger.setdefault(where, [0, 0, 0, 0.0, 0])
                    row[0] += 1
                    row[1] += entry.input_tokens
                    row[2] += entry.output_tokens
                    row[3] += entry.usd
                    row[4] += entry.estimated
                    for kind, name in spend_names(entry):
                        row = spent_by.setdefault(
                            (entry.day, entry.key, kind, name), [0, 0, 0, 0.0]
                        )
                        row[0] += 1
                        row[1] += entry.input_tokens
                        row[2] += entry.output_tokens
                        row[3] += entry.usd
            decisions = [self._admit(request, adds, changed, taken) for request in requests]
            if changed:
                process, expiry = self._process, self._mine_expires
                db.executemany(HOLD, [(process, c, mine[c], expiry.get(c, now)) for c in changed])
            if adds:
                db.executemany(ADD, [(c, s, a, e) for (c, s), (a, e) in adds.items()])
            if ledger:
                db.executemany(LEDGER, [(*k, *v) for k, v in ledger.items()])
            if spent_by:
                db.executemany(SPEND_BY, [(*k, *v) for k, v in spent_by.items()])
            if now - self._swept > _SWEEP_EVERY:
                self._swept = now
                db.execute("delete from buckets where expires < ?", (now,))
                db.execute("delete from holds where expires < ?", (now,))
            db.execute("commit")
            return decisions
        except (sqlite3.Error, OSError) as exc:
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
        return await self._call(self._read_used, checks, now)

    def _read_used(self, checks: Sequence[Check], now: float) -> dict[str, float]:
        db = self._db
        try:
            self._keep_shm()
            db.execute("begin")
            try:
                self._refresh(now)
                return {check.counter: self._used(check) for check in checks}
            finally:
                db.execute("commit")
        except (sqlite3.Error, OSError) as exc:
            raise self._error(exc) from None

    async def usage(self, since_day: str, keys: Sequence[str] | None = None) -> list[UsageRow]:
        return await self._call(self._read_usage, since_day, keys)

    def _read_usage(self, since_day: str, keys: Sequence[str] | None) -> list[UsageRow]:
        query, parameters = USAGE, [since_day]
        if keys is not None:
            query += f" and key in ({', '.join('?' * len(keys))})"
            parameters += keys
        try:
            self._keep_shm()
            rows = self._db.execute(query + " order by day, key, model", parameters).fetchall()
        except (sqlite3.Error, OSError) as exc:
            raise self._error(exc) from None
        return [UsageRow(*row) for row in rows]

    async def spend_by(self, since_day: str, keys: Sequence[str] | None = None) -> list[SpendRow]:
        return await self._call(self._read_spend_by, since_day, keys)

    def _read_spend_by(self, since_day: str, keys: Sequence[str] | None) -> list[SpendRow]:
        query, parameters = "select * from spend_by where day >= ?", [since_day]
        if keys is not None:
            query += f" and key in ({', '.join('?' * len(keys))})"
            parameters += keys
        try:
            self._keep_shm()
            rows = self._db.execute(query, parameters).fetchall()
        except (sqlite3.Error, OSError) as exc:
            raise self._error(exc) from None
        return [SpendRow(*row) for row in rows]

    async def check(self) -> None:
        try:
            await asyncio.wait_for(self._call(self._check), STORE_TIMEOUT)
        except TimeoutError:
            raise StateError(
                f"state file {self.path}: no answer within {STORE_TIMEOUT:g}s"
            ) from None

    def _check(self) -> None:
        """The file is the one opened, and a write transaction can begin."""
        try:
            identity = _identity(self.path)
        except FileNotFoundError:
            identity = None
        if identity != self._identity:
            what = "deleted" if identity is None else "replaced by another file"
            raise StateError(
                f"the state file {self.path} was {what} while the gateway was using it: "
                "what it counts now is lost at restart; restore the file or restart"
            )
        try:
            self._keep_shm()
            self._db.execute("begin immediate")
            self._db.execute("rollback")
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"state file {self.path} cannot be written: {exc}") from None

    async def aclose(self) -> None:
        await self._call(self._db.close)
        self._thread.shutdown(wait=False)


def _identity(path: Path) -> tuple[int, int]:
    found = os.stat(path)
    return found.st_dev, found.st_ino
