"""The embedded store: one SQLite file in WAL mode, shared by the processes of one host.

``admit`` is one ``BEGIN IMMEDIATE`` transaction, which takes SQLite's write lock first,
so the checks and the taking are atomic across ``runestone serve --workers N``. The
calls are synchronous on the event loop: a transaction is tens of microseconds, less
than a hop to a thread and back would cost; a lock held too long by another process
fails after ``busy_timeout`` rather than hang the request.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from runestone.access._store import Check, Decision, Settlement, StateError, UsageRow

_SCHEMA = """
create table if not exists buckets (
    counter text not null, start real not null, amount real not null, expires real not null,
    primary key (counter, start)) without rowid;
create table if not exists leases (
    counter text not null, lease text not null, amount real not null, expires real not null,
    primary key (counter, lease)) without rowid;
create table if not exists ledger (
    day text not null, key text not null, team text not null, model text not null,
    requests integer not null, input_tokens integer not null, output_tokens integer not null,
    usd real not null, primary key (day, key, team, model)) without rowid;
"""

_BUCKETS = "select coalesce(sum(amount), 0) from buckets where counter = ? and start >= ?"
_LEASES = "select coalesce(sum(amount), 0) from leases where counter = ? and expires > ?"
_ADD = (
    "insert into buckets values (?, ?, ?, ?) on conflict do update set "
    "amount = amount + excluded.amount, expires = max(expires, excluded.expires)"
)
_LEASE = "insert or replace into leases values (?, ?, ?, ?)"
_RELEASE = "delete from leases where counter = ? and lease = ?"
_LEDGER = (
    "insert into ledger values (?, ?, ?, ?, 1, ?, ?, ?) on conflict do update set "
    "requests = requests + 1, input_tokens = input_tokens + excluded.input_tokens, "
    "output_tokens = output_tokens + excluded.output_tokens, usd = usd + excluded.usd"
)
_SWEEP_EVERY = 60.0


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

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.path}>"

    def _used(self, check: Check, now: float) -> float:
        execute = self._db.execute
        used = 0.0
        if check.since is not None:
            used += execute(_BUCKETS, (check.counter, check.since)).fetchone()[0]
        if check.leases:
            used += execute(_LEASES, (check.counter, now)).fetchone()[0]
        return float(used)

    async def admit(
        self, checks: Sequence[Check], lease: str, now: float, expires: float
    ) -> Decision:
        db = self._db
        try:
            db.execute("begin immediate")
            used: dict[str, float] = {}
            for check in checks:
                used[check.counter] = amount = self._used(check, now)
                if amount + check.amount > check.limit:
                    db.execute("rollback")
                    return Decision(check, used)
            for check in checks:
                if check.mode == "count":
                    db.execute(
                        _ADD, (check.counter, check.bucket, check.amount, check.bucket + check.keep)
                    )
                elif check.mode == "lease":
                    db.execute(_LEASE, (check.counter, lease, check.amount, expires))
            if now - self._swept > _SWEEP_EVERY:
                self._sweep(now)
            db.execute("commit")
            return Decision(None, used)
        except sqlite3.Error as exc:
            self._rollback()
            raise StateError(f"state file {self.path}: {exc}") from None

    def _sweep(self, now: float) -> None:
        self._swept = now
        self._db.execute("delete from buckets where expires < ?", (now,))
        self._db.execute("delete from leases where expires < ?", (now,))

    def _rollback(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("rollback")

    async def settle(self, settlements: Sequence[Settlement], now: float) -> None:
        db = self._db
        try:
            db.execute("begin immediate")
            for settled in settlements:
                for counter in settled.counters:
                    db.execute(_RELEASE, (counter, settled.lease))
                for added in settled.additions:
                    db.execute(
                        _ADD, (added.counter, added.bucket, added.amount, added.bucket + added.keep)
                    )
                entry = settled.ledger
                if entry is not None:
                    db.execute(
                        _LEDGER,
                        (
                            entry.day,
                            entry.key,
                            entry.team,
                            entry.model,
                            entry.input_tokens,
                            entry.output_tokens,
                            entry.usd,
                        ),
                    )
            db.execute("commit")
        except sqlite3.Error as exc:
            self._rollback()
            raise StateError(f"state file {self.path}: {exc}") from None

    async def used(self, checks: Sequence[Check], now: float) -> dict[str, float]:
        try:
            return {check.counter: self._used(check, now) for check in checks}
        except sqlite3.Error as exc:
            raise StateError(f"state file {self.path}: {exc}") from None

    async def usage(self, since_day: str) -> list[UsageRow]:
        try:
            rows = self._db.execute(
                "select * from ledger where day >= ? order by day, key, model", (since_day,)
            ).fetchall()
        except sqlite3.Error as exc:
            raise StateError(f"state file {self.path}: {exc}") from None
        return [UsageRow(*row) for row in rows]

    async def ping(self) -> None:
        try:
            self._db.execute("select 1").fetchone()
        except sqlite3.Error as exc:
            raise StateError(f"state file {self.path}: {exc}") from None

    async def aclose(self) -> None:
        self._db.close()
