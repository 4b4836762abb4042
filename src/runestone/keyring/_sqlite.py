"""The keyring in a SQLite file of its own beside the state file (``keys.sqlite3``).

Its own file, so that its writes never invalidate the limits store's mirror. Opened
when first written, or once it exists: a gateway that never makes a key by API makes
no file. Calls run on one thread of the store's own, never on the event loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from runestone.access import StateError
from runestone.keyring._store import MAX_AUDIT_ENTRIES, Changes, page_of

T = TypeVar("T")

_SCHEMA = """
create table if not exists records (
    name text primary key, body blob not null, version integer not null) without rowid;
create index if not exists records_by_version on records (version);
create table if not exists audit (seq integer primary key autoincrement, body blob not null);
create table if not exists claims (name text primary key, expires real not null) without rowid;
"""


class SQLiteKeyring:
    name = "sqlite"

    def __init__(self, path: Path | str, *, busy_timeout: float = 2.0) -> None:
        self.path = Path(path)
        self._timeout = busy_timeout
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="runestone-keyring")
        self._trimmed = 0.0

    def __repr__(self) -> str:
        return f"<SQLiteKeyring {self.path}>"

    async def _call(self, work: Callable[..., T], *args: object) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, work, *args)
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"keyring {self.path}: {exc}") from None

    def _open(self, create: bool) -> sqlite3.Connection | None:
        if self._db is None:
            if not create and not self.path.exists():
                return None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
            )
            db.execute("pragma journal_mode = wal")
            db.execute("pragma synchronous = normal")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    async def version(self) -> int:
        if self._db is None and not self.path.exists():
            return 0  # no key made by API yet: a stat, not a thread hop, four times a second
        return await self._call(self._version)

    def _version(self) -> int:
        db = self._open(create=False)
        if db is None:
            return 0
        return int(db.execute("select coalesce(max(version), 0) from records").fetchone()[0])

    async def changes(self, since: int) -> Changes:
        return await self._call(self._changes, since)

    def _changes(self, since: int) -> Changes:
        db = self._open(create=False)
        if db is None:
            return Changes(0, [], complete=since == 0)
        db.execute("begin")
        try:
            rows = db.execute(
                "select name, body, version from records where version > ? order by version",
                (since,),
            ).fetchall()
            version = int(db.execute("select coalesce(max(version), 0) from records").fetchone()[0])
        finally:
            db.execute("commit")
        return Changes(version, [(name, bytes(body)) for name, body, _ in rows], since == 0)

    async def put(self, name: str, body: bytes, *, create: bool) -> int | None:
        return await self._call(self._put, name, body, create)

    def _put(self, name: str, body: bytes, create: bool) -> int | None:
        db = self._open(create=True)
        assert db is not None
        db.execute("begin immediate")
        try:
            version = db.execute("select coalesce(max(version), 0) + 1 from records").fetchone()[0]
            if create:
                taken = db.execute("select 1 from records where name = ?", (name,)).fetchone()
                if taken:
                    db.execute("rollback")
                    return None
            db.execute(
                "insert into records values (?, ?, ?) on conflict (name) do update set "
                "body = excluded.body, version = excluded.version",
                (name, body, version),
            )
            db.execute("commit")
        except BaseException:
            if db.in_transaction:
                db.execute("rollback")
            raise
        return int(version)

    async def append_audit(self, entry: bytes) -> None:
        await self._call(self._append, entry)

    def _append(self, entry: bytes) -> None:
        db = self._open(create=True)
        assert db is not None
        db.execute("insert into audit (body) values (?)", (entry,))
        now = time.monotonic()
        if now - self._trimmed > 60:
            self._trimmed = now
            db.execute(
                "delete from audit where seq <= (select max(seq) from audit) - ?",
                (MAX_AUDIT_ENTRIES,),
            )

    async def audit(
        self, before: str | None, limit: int
    ) -> tuple[list[tuple[str, bytes]], str | None]:
        return await self._call(self._audit, before, limit)

    def _audit(self, before: str | None, limit: int) -> tuple[list[tuple[str, bytes]], str | None]:
        db = self._open(create=False)
        if db is None:
            return [], None
        start = int(before) if before and before.isdigit() else 2**62
        rows = db.execute(
            "select seq, body from audit where seq < ? order by seq desc limit ?",
            (start, limit + 1),
        ).fetchall()
        return page_of([(str(seq), bytes(body)) for seq, body in rows], limit)

    async def claim(self, name: str, seconds: float) -> bool:
        return await self._call(self._claim, name, seconds)

    def _claim(self, name: str, seconds: float) -> bool:
        db = self._open(create=True)
        assert db is not None
        now = time.time()
        db.execute("begin immediate")
        try:
            db.execute("delete from claims where expires < ?", (now,))
            claimed = db.execute(
                "insert or ignore into claims values (?, ?)", (name, now + seconds)
            ).rowcount
            db.execute("commit")
        except BaseException:
            if db.in_transaction:
                db.execute("rollback")
            raise
        return claimed == 1

    async def aclose(self) -> None:
        if self._db is not None:
            await self._call(self._db.close)
            self._db = None
        self._thread.shutdown(wait=False)
