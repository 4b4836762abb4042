"""Cached answers in a SQLite file of their own beside the state file (``cache.sqlite3``)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from runestone.access import StateError
from runestone.cache._store import CacheBounds, Entry

T = TypeVar("T")

_SCHEMA = """
create table if not exists entries (
    key text primary key, body blob not null, size integer not null, created real not null,
    expires real not null, scope text not null, alias text not null) without rowid;
create index if not exists entries_by_age on entries (created);
"""


class SQLiteCache:
    name = "sqlite"

    def __init__(self, path: Path | str, bounds: CacheBounds, *, busy_timeout: float = 0.5):
        self.path = Path(path)
        self.bounds = bounds
        self._timeout = busy_timeout
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="runestone-cache")

    async def _call(self, work: Callable[..., T], *args: object) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, work, *args)
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"cache {self.path}: {exc}") from None

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
            )
            db.execute("pragma journal_mode = wal")
            db.execute("pragma synchronous = normal")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    async def get(self, key: str, now: float) -> Entry | None:
        return await self._call(self._get, key, now)

    def _get(self, key: str, now: float) -> Entry | None:
        row = (
            self._open()
            .execute("select body from entries where key = ? and expires > ?", (key, now))
            .fetchone()
        )
        return None if row is None else Entry.decode(row[0])

    async def put(self, key: str, entry: Entry, ttl: float, now: float) -> None:
        await self._call(self._put, key, entry, ttl, now)

    def _put(self, key: str, entry: Entry, ttl: float, now: float) -> None:
        db = self._open()
        body = entry.encode()
        db.execute("begin immediate")
        try:
            db.execute(
                "insert or replace into entries values (?, ?, ?, ?, ?, ?, ?)",
                (key, body, len(body), now, now + ttl, entry.scope, entry.alias),
            )
            db.execute("delete from entries where expires <= ?", (now,))
            count, size = db.execute(
                "select count(*), coalesce(sum(size), 0) from entries"
            ).fetchone()
            bounds = self.bounds
            if count > bounds.max_entries or size > bounds.max_bytes:
                # The oldest go first, until both bounds hold again.
                rows = db.execute("select key, size from entries order by created").fetchall()
                victims = []
                for victim, victim_size in rows:
                    if count <= bounds.max_entries and size <= bounds.max_bytes:
                        break
                    victims.append((victim,))
                    count, size = count - 1, size - victim_size
                db.executemany("delete from entries where key = ?", victims)
            db.execute("commit")
        except BaseException:
            if db.in_transaction:
                db.execute("rollback")
            raise

    async def purge(self, scope: str | None, alias: str | None) -> int:
        return await self._call(self._purge, scope, alias)

    def _purge(self, scope: str | None, alias: str | None) -> int:
        query, parameters = "delete from entries where 1", []
        if scope is not None:
            query += " and scope = ?"
            parameters.append(scope)
        if alias is not None:
            query += " and alias = ?"
            parameters.append(alias)
        return int(self._open().execute(query, parameters).rowcount)

    async def aclose(self) -> None:
        if self._db is not None:
            await self._call(self._db.close)
            self._db = None
        self._thread.shutdown(wait=False)
