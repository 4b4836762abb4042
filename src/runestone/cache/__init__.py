"""The exact response cache: an answer kept for a while and given again, free, to the
same request (see ``_decision`` for what "the same" means).

Opt-in, per alias (``cache: {ttl: 10m}`` in its map) or per key. A hit costs no budget
and no upstream call, and says so (``x-runestone-cache: hit``). Non-streamed answers
and whole streams (only those that ended cleanly) are kept, as their client received
them. Identical requests that miss at the same time in one process make one upstream
call for a non-streamed answer (the others wait for it, then hit); streams each make
their own. The store failing or slow never fails a request: it is then a miss, and the
answer is not kept.

Modules: ``_decision`` (whether and under which key), ``_store`` (the interface and
entries), ``_sqlite`` and ``_redis`` (the stores).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from runestone.aliases import AliasTable, KeySpec
from runestone.cache._decision import Decision, decide
from runestone.cache._store import CacheBounds, CacheStore, Entry

log = logging.getLogger("runestone.cache")

#: The most a lookup may take before it is a miss.
LOOKUP_SECONDS = 0.25
#: The most a request waits for an identical one in flight to answer.
FOLLOW_SECONDS = 120.0


class ResponseCache:
    """The cache of one process: decisions, lookups, writes, and one call per miss."""

    def __init__(self, open_store: Callable[[], CacheStore]) -> None:
        self._open = open_store
        self._store: CacheStore | None = None
        self._flights: dict[str, asyncio.Future[Entry | None]] = {}
        self._writes: set[asyncio.Task[None]] = set()
        self.last_error: str | None = None
        self.clock: Callable[[], float] = time.time
        self._table: AliasTable | None = None
        self._table_caches = False

    def may_apply(self, table: AliasTable, key: KeySpec | None) -> bool:
        """Whether any cache is configured for a request with ``key`` under ``table``:
        one test per request when none is (the table's answer is kept per table)."""
        if key is not None and key.cache is not None:
            return True
        if table is not self._table:
            aliases = [*table.aliases.values(), *(alias for _, alias in table.patterns)]
            self._table, self._table_caches = table, any(a.cache for a in aliases)
        return self._table_caches

    @property
    def store(self) -> CacheStore:
        if self._store is None:
            self._store = self._open()
        return self._store

    def _failed(self, what: str, exc: BaseException) -> None:
        if self.last_error != str(exc):
            log.warning("response cache: %s failed (%s): a miss, not an error", what, exc)
        self.last_error = str(exc)

    async def lookup(self, decision: Decision) -> Entry | None:
        """The stored answer, or None (a miss: the caller leads or follows the call)."""
        if not decision.read:
            return None
        try:
            async with asyncio.timeout(LOOKUP_SECONDS):
                found = await self.store.get(decision.key, self.clock())
        except Exception as exc:  # the store's error, a timeout: a miss
            self._failed("a lookup", exc)
            return None
        if found is not None and found.stream == decision.stream:
            decision.state = "hit"
            return found
        return None

    async def follow(self, decision: Decision) -> Entry | None:
        """When an identical request is already asking upstream: its answer (None if it
        failed, or is a stream); else None, and this request leads (``finish`` it)."""
        flight = self._flights.get(decision.key)
        if flight is None:
            if decision.write and not decision.stream:
                self._flights[decision.key] = asyncio.get_running_loop().create_future()
            return None
        try:
            found = await asyncio.wait_for(asyncio.shield(flight), FOLLOW_SECONDS)
        except TimeoutError:
            return None
        if found is not None:
            decision.state = "hit"
        return found

    def finish(self, decision: Decision, entry: Entry | None) -> None:
        """The leader's answer (None if it failed or is not to be kept): to those waiting
        on it, and to the store in the background."""
        flight = self._flights.pop(decision.key, None)
        if flight is not None and not flight.done():
            flight.set_result(entry)
        if entry is None or not decision.write:
            return
        task = asyncio.get_running_loop().create_task(self._put(decision, entry))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _put(self, decision: Decision, entry: Entry) -> None:
        try:
            await self.store.put(decision.key, entry, decision.spec.ttl, self.clock())
        except Exception as exc:
            self._failed("a write", exc)

    def entry(
        self, decision: Decision, content_type: str, body: bytes, target: str, cost: float | None
    ) -> Entry:
        return Entry(
            content_type,
            body,
            decision.stream,
            target,
            cost,
            self.clock(),
            decision.scope,
            decision.alias,
        )

    async def purge(self, scope: str | None, alias: str | None) -> int:
        return await self.store.purge(scope, alias)

    async def aclose(self) -> None:
        if self._writes:
            await asyncio.wait(self._writes, timeout=2.0)
        if self._store is not None:
            await self._store.aclose()
            self._store = None


def open_cache(
    *, redis_url: str | None, prefix: str, state_path: Path, bounds: CacheBounds
) -> CacheStore:
    """Redis at ``redis_url`` when given, else ``cache.sqlite3`` beside ``state_path``."""
    if redis_url:
        from runestone.cache._redis import RedisCache

        return RedisCache(redis_url, bounds, prefix=prefix)
    from runestone.cache._sqlite import SQLiteCache

    return SQLiteCache(state_path.with_name("cache.sqlite3"), bounds)


__all__ = ["CacheBounds", "Decision", "Entry", "ResponseCache", "decide", "open_cache"]
