"""Stored responses in one SQLite file (WAL), on a thread of its own.

Its own file beside the state of limits and budgets (``responses.sqlite3``): its writes
then never make the limits' store read its mirror again. Each response is one row; an
index of item ids says which response holds an item; one row of totals (count and
bytes) is kept with every write, so that the bounds are checked without a scan, and the
oldest rows past them are deleted in the same transaction. What is past its age is
deleted once a minute, and never read meanwhile.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from runestone.access import StateError
from runestone.conversations._store import Bounds, Stored

T = TypeVar("T")

_SCHEMA = """
create table if not exists responses (
    id text primary key, owner text not null, created real not null,
    size integer not null, body blob not null);
create index if not exists responses_by_age on responses (created);
create table if not exists items (
    id text primary key, response text not null, owner text not null);
create index if not exists items_by_response on items (response);
create table if not exists totals (
    one integer primary key check (one = 1), responses integer not null, bytes integer not null);
insert or ignore into totals
    select 1, count(*), coalesce(sum(size), 0) from responses;
"""
_AGE_SWEEP_EVERY = 60.0  # seconds between deletions of what is past its age


class SQLiteResponses:
    name = "sqlite"

    def __init__(self, path: Path, *, bounds: Bounds, busy_timeout: float = 2.0) -> None:
        self.path = path
        self.bounds = bounds
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._db.execute("pragma journal_mode = wal")
            self._db.execute("pragma synchronous = normal")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"cannot open the response store {path}: {exc}") from None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="runestone-responses")
        self._swept = 0.0
        self._waiting: list[tuple[Stored, bytes, asyncio.Future[None]]] = []

    def __repr__(self) -> str:
        return f"<SQLiteResponses {self.path}>"

    async def _call(self, work: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, work, *args)
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"the response store {self.path}: {exc}") from None

    async def put(self, record: Stored, now: float) -> None:
        # The puts of one turn of the event loop go together: one hop to the store's
        # thread and one transaction for all of them (a hop costs more than a write).
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((record, record.encode(), done))
        if len(self._waiting) == 1:
            asyncio.get_running_loop().call_soon(self._flush, now)
        await done

    def _flush(self, now: float) -> None:
        batch, self._waiting = self._waiting, []
        loop = asyncio.get_running_loop()
        writing = loop.run_in_executor(self._thread, self._put, [(r, b) for r, b, _ in batch], now)

        def settle(writing: asyncio.Future[None]) -> None:
            failed = writing.exception()
            if isinstance(failed, sqlite3.Error | OSError):
                failed = StateError(f"the response store {self.path}: {failed}")
            for _, _, done in batch:
                if done.done():  # its request was cancelled meanwhile
                    continue
                if failed is not None:
                    done.set_exception(failed)
                else:
                    done.set_result(None)

        writing.add_done_callback(settle)

    def _put(self, batch: list[tuple[Stored, bytes]], now: float) -> None:
        db = self._db
        db.execute("begin immediate")
        try:
            for record, body in batch:
                old = db.execute("select size from responses where id = ?", (record.id,)).fetchone()
                db.execute(
                    "insert or replace into responses values (?, ?, ?, ?, ?)",
                    (record.id, record.owner, record.created, len(body), body),
                )
                db.executemany(
                    "insert or replace into items values (?, ?, ?)",
                    [(item, record.id, record.owner) for item in record.item_ids()],
                )
                added = (0, len(body) - old[0]) if old else (1, len(body))
                db.execute("update totals set responses = responses + ?, bytes = bytes + ?", added)
            self._trim(now)
            db.execute("commit")
        except BaseException:
            db.execute("rollback")
            raise

    def _trim(self, now: float) -> None:
        db, bounds = self._db, self.bounds
        if now - self._swept > _AGE_SWEEP_EVERY:
            self._swept = now
            self._drop("select id, size from responses where created < ?", now - bounds.max_age)
        count, size = db.execute("select responses, bytes from totals").fetchone()
        if count > bounds.max_responses or size > bounds.max_bytes:
            doomed: list[tuple[str, int]] = []
            for response_id, row_size in db.execute(
                "select id, size from responses order by created"
            ):
                if count <= bounds.max_responses and size <= bounds.max_bytes:
                    break
                doomed.append((response_id, row_size))
                count, size = count - 1, size - row_size
            self._forget(doomed)

    def _drop(self, query: str, *args: object) -> int:
        """Forget the responses ``query`` selects (id, size); how many they were."""
        doomed = self._db.execute(query, args).fetchall()
        self._forget(doomed)
        return len(doomed)

    def _forget(self, doomed: list[tuple[str, int]]) -> None:
        if not doomed:
            return
        db = self._db
        db.executemany("delete from responses where id = ?", [(d,) for d, _ in doomed])
        db.executemany("delete from items where response = ?", [(d,) for d, _ in doomed])
        db.execute(
            "update totals set responses = responses - ?, bytes = bytes - ?",
            (len(doomed), sum(size for _, size in doomed)),
        )

    async def get(self, response_id: str, owner: str, now: float) -> Stored | None:
        return await self._call(self._get, response_id, owner, now)

    def _get(self, response_id: str, owner: str, now: float) -> Stored | None:
        row = self._db.execute(
            "select body from responses where id = ? and owner = ? and created >= ?",
            (response_id, owner, now - self.bounds.max_age),
        ).fetchone()
        return None if row is None else Stored.decode(response_id, row[0])

    async def holding(self, item_id: str, owner: str, now: float) -> Stored | None:
        return await self._call(self._holding, item_id, owner, now)

    def _holding(self, item_id: str, owner: str, now: float) -> Stored | None:
        row = self._db.execute(
            "select response from items where id = ? and owner = ?", (item_id, owner)
        ).fetchone()
        return None if row is None else self._get(row[0], owner, now)

    async def delete(self, response_id: str, owner: str) -> bool:
        return await self._call(self._delete, response_id, owner)

    def _delete(self, response_id: str, owner: str) -> bool:
        db = self._db
        db.execute("begin immediate")
        try:
            gone = self._drop(
                "select id, size from responses where id = ? and owner = ?", response_id, owner
            )
            db.execute("commit")
        except BaseException:
            db.execute("rollback")
            raise
        return bool(gone)

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._db.close)
        self._thread.shutdown(wait=False)
