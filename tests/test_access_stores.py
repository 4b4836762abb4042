"""The store contract: the SQLite file and Redis pass the same tests.

What ``runestone.access`` relies on: an ``admit`` checks every limit and takes only if
all pass, atomically (also from many processes at once); leases expire; ``settle``
releases and books; reads take nothing.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from runestone.access._redis import RedisStore
from runestone.access._sqlite import SQLiteStore
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
from tests.redis_server import RedisServer


@pytest.fixture(params=["sqlite", "redis"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer
) -> AsyncIterator[Store]:
    made: Store
    if request.param == "sqlite":
        made = SQLiteStore(tmp_path / "state.sqlite3")
    else:
        made = RedisStore(redis_server.url, prefix=f"t{time.monotonic_ns()}")
    yield made
    await made.aclose()


async def admit(
    store: Store, checks: list[Check], lease: str, now: float, expires: float
) -> Decision:
    (decision,) = await store.sync([], [Request(tuple(checks), lease, expires)], now)
    return decision


async def settle(store: Store, settlements: list[Settlement], now: float) -> None:
    assert await store.sync(settlements, [], now) == []


NOW = 1_764_460_800.0  # a fixed moment (2025-11-30T00:00Z): the windows are the caller's


def rpm(limit: float, now: float = NOW) -> Check:
    start = now - now % 60
    return Check(
        "k:a:rpm", limit, 1, "count", since=start, bucket=start, resets=start + 60, keep=60
    )


def parallel(limit: float) -> Check:
    return Check("k:a:parallel", limit, 1, "lease", leases=True)


def budget(limit: float, reserve: float, since: float = NOW - 3600) -> Check:
    return Check(
        "k:a:usd/day", limit, reserve, "lease", since=since, bucket=NOW, leases=True, keep=86400
    )


async def test_count_admits_up_to_the_limit(store: Store) -> None:
    decisions = [await admit(store, [rpm(2)], f"r{i}", NOW, NOW + 60) for i in range(3)]
    assert [d.refused is None for d in decisions] == [True, True, False]
    assert [d.used["k:a:rpm"] for d in decisions] == [0, 1, 2]
    assert (await store.used([rpm(2)], NOW))["k:a:rpm"] == 2  # the refusal took nothing
    assert (await admit(store, [rpm(2, NOW + 60)], "r9", NOW + 60, NOW + 120)).refused is None


async def test_a_refusal_takes_nothing_from_the_checks_that_passed(store: Store) -> None:
    assert (await admit(store, [parallel(1)], "r1", NOW, NOW + 60)).refused is None
    refused = await admit(store, [rpm(5), parallel(1)], "r2", NOW, NOW + 60)
    assert refused.refused is not None and refused.refused.counter == "k:a:parallel"
    assert (await store.used([rpm(5)], NOW))["k:a:rpm"] == 0


async def test_leases_are_released_by_settle_and_expire(
    store: Store, tmp_path: Path, redis_server: RedisServer
) -> None:
    assert (await admit(store, [parallel(1)], "r1", NOW, NOW + 30)).refused is None
    assert (await admit(store, [parallel(1)], "r2", NOW, NOW + 30)).refused is not None
    await settle(store, [Settlement("r1", ("k:a:parallel",))], NOW)
    assert (await admit(store, [parallel(1)], "r3", NOW, NOW + 30)).refused is None
    # r3 is never settled: its gateway died. Another process finds the slot held until
    # r3's expiry, and free after it.
    other = sibling(store, tmp_path, redis_server)
    assert (await admit(other, [parallel(1)], "r4", NOW + 29, NOW + 60)).refused is not None
    assert (await admit(other, [parallel(1)], "r5", NOW + 31, NOW + 60)).refused is None
    await other.aclose()


def sibling(store: Store, tmp_path: Path, redis_server: RedisServer) -> Store:
    """A second process's view of the same store."""
    if isinstance(store, SQLiteStore):
        return SQLiteStore(store.path)
    assert isinstance(store, RedisStore)
    return RedisStore(redis_server.url, prefix=store.prefix)


async def test_budgets_count_spend_and_reservations(store: Store) -> None:
    first = await admit(store, [budget(1.0, 0.6)], "r1", NOW, NOW + 600)
    assert first.refused is None
    assert (await admit(store, [budget(1.0, 0.6)], "r2", NOW, NOW + 600)).refused is not None
    settled = Settlement("r1", ("k:a:usd/day",), [Addition("k:a:usd/day", NOW, 0.25, 86400)])
    await settle(store, [settled], NOW)
    assert (await store.used([budget(1.0, 0)], NOW))["k:a:usd/day"] == pytest.approx(0.25)
    assert (await admit(store, [budget(1.0, 0.6)], "r3", NOW, NOW + 600)).refused is None
    # Spend before the window's start does not count.
    assert (await store.used([budget(1.0, 0, since=NOW + 1)], NOW))["k:a:usd/day"] == 0.6


async def test_levels_look_without_taking(store: Store) -> None:
    tpm = Check("k:a:tpm", 100, 1, "level", since=NOW, bucket=NOW, keep=60)
    await settle(store, [Settlement("x", (), [Addition("k:a:tpm", NOW, 99, 60)])], NOW)
    assert (await admit(store, [tpm], "r1", NOW, NOW + 60)).refused is None
    assert (await admit(store, [tpm], "r2", NOW, NOW + 60)).refused is None
    await settle(store, [Settlement("y", (), [Addition("k:a:tpm", NOW, 1, 60)])], NOW)
    assert (await admit(store, [tpm], "r3", NOW, NOW + 60)).refused is not None


async def test_the_ledger_sums_per_day_key_and_model(store: Store) -> None:
    today = time.strftime("%Y-%m-%d", time.gmtime())
    entries = [
        LedgerEntry(today, "a", "search", "openai:gpt-4", 5, 7, 0.5),
        LedgerEntry(today, "a", "search", "openai:gpt-4", 1, 1, 0.25),
        LedgerEntry(today, "b", "", "mock:echo", 2, 2, 0.0),
    ]
    await settle(store, [Settlement(f"r{i}", (), [], e) for i, e in enumerate(entries)], NOW)
    rows = {(r.key, r.model): r for r in await store.usage(today)}
    a = rows[("a", "openai:gpt-4")]
    assert (a.requests, a.input_tokens, a.output_tokens, a.team) == (2, 6, 8, "search")
    assert a.usd == pytest.approx(0.75)
    assert rows[("b", "mock:echo")].requests == 1


async def test_concurrent_admits_take_exactly_the_limit(store: Store) -> None:
    decisions = await asyncio.gather(
        *(admit(store, [rpm(10), budget(1.0, 0.1)], f"r{i}", NOW, NOW + 60) for i in range(50))
    )
    assert sum(d.refused is None for d in decisions) == 10


def _admit_many(
    path: str, url: str, kind: str, worker: int, results: multiprocessing.Queue
) -> None:  # type: ignore[type-arg]
    async def run() -> int:
        store: Store = SQLiteStore(path) if kind == "sqlite" else RedisStore(url, prefix="procs")
        admitted = 0
        for i in range(25):
            decision = await admit(store, [rpm(40)], f"w{worker}-{i}", NOW, NOW + 60)
            admitted += decision.refused is None
        await store.aclose()
        return admitted

    results.put(asyncio.run(run()))


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_processes_sharing_a_store_take_exactly_the_limit(
    kind: str, tmp_path: Path, redis_server: RedisServer
) -> None:
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[int] = context.Queue()
    path = str(tmp_path / "shared.sqlite3")
    SQLiteStore(path)  # create the schema once, before the race
    workers = [
        context.Process(target=_admit_many, args=(path, redis_server.url, kind, n, results))
        for n in range(4)
    ]
    for worker in workers:
        worker.start()
    totals = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(10)
    assert sum(totals) == 40  # 100 tries from 4 processes, a limit of 40


async def test_an_unreachable_redis_fails_fast() -> None:
    store = RedisStore("redis://127.0.0.1:9/0", timeout=0.2)  # nothing listens on port 9
    started = time.monotonic()
    with pytest.raises(StateError) as caught:
        await admit(store, [rpm(1)], "r1", NOW, NOW + 60)
    assert time.monotonic() - started < 1.5
    assert "127.0.0.1:9" in str(caught.value)
    await store.aclose()


async def test_an_unwritable_state_file_is_a_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(StateError):
        SQLiteStore(blocker / "state.sqlite3")


async def test_one_sync_settles_then_admits_many(store: Store) -> None:
    assert (await admit(store, [parallel(2)], "r1", NOW, NOW + 60)).refused is None
    assert (await admit(store, [parallel(2)], "r2", NOW, NOW + 60)).refused is None
    requests = [Request((parallel(2), rpm(10)), f"n{i}", NOW + 60) for i in range(3)]
    decisions = await store.sync([Settlement("r1", ("k:a:parallel",))], requests, NOW)
    # r1's slot came back first; n0 takes it, n1 and n2 find both slots held.
    assert [d.refused is None for d in decisions] == [True, False, False]
    assert (await store.used([rpm(10)], NOW))["k:a:rpm"] == 1


async def test_two_sqlite_connections_see_each_others_commits(tmp_path: Path) -> None:
    # Each keeps a mirror in memory; a commit by the other must invalidate it.
    one, two = SQLiteStore(tmp_path / "s.sqlite3"), SQLiteStore(tmp_path / "s.sqlite3")
    assert (await admit(one, [parallel(1), rpm(3)], "r1", NOW, NOW + 60)).refused is None
    assert (await admit(two, [parallel(1)], "r2", NOW, NOW + 60)).refused is not None
    await settle(one, [Settlement("r1", ("k:a:parallel",))], NOW)
    assert (await admit(two, [parallel(1), rpm(3)], "r3", NOW, NOW + 60)).refused is None
    assert (await admit(one, [rpm(3)], "r4", NOW, NOW + 60)).used["k:a:rpm"] == 2
    await one.aclose()
    await two.aclose()


async def test_a_locked_state_file_fails_fast_and_leaks_nothing(tmp_path: Path) -> None:
    import sqlite3

    store = SQLiteStore(tmp_path / "s.sqlite3", busy_timeout=0.1)
    assert (await admit(store, [parallel(1)], "r1", NOW, NOW + 60)).refused is None
    blocker = sqlite3.connect(tmp_path / "s.sqlite3", isolation_level=None)
    blocker.execute("begin immediate")  # another process holds the write lock
    started = time.monotonic()
    with pytest.raises(StateError):
        await store.sync([Settlement("r1", ("k:a:parallel",))], [], NOW)
    assert time.monotonic() - started < 1
    blocker.execute("rollback")
    blocker.close()
    # The failed settlement changed nothing: r1 still holds its slot until settled again.
    assert (await admit(store, [parallel(1)], "r2", NOW, NOW + 60)).refused is not None
    await settle(store, [Settlement("r1", ("k:a:parallel",))], NOW)
    assert (await admit(store, [parallel(1)], "r3", NOW, NOW + 60)).refused is None
    await store.aclose()


async def test_a_failing_store_never_leaves_a_request_waiting(tmp_path: Path) -> None:
    from runestone.access import Access
    from runestone.aliases import KeySpec, Limits, parse_alias_file

    class Broken(SQLiteStore):
        async def sync(self, settlements: Any, requests: Any, now: float) -> Any:
            raise RuntimeError("a bug in a store")

    access = Access(lambda: Broken(tmp_path / "s.sqlite3"))
    table = parse_alias_file(b"aliases:\n  echo: mock:echo\n", "x")
    key = KeySpec("k", "0" * 64, Limits(rpm=5))
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(access.admit(key, table, "echo", {}, b"{}"), 2)
    await access.aclose()


async def test_the_script_is_loaded_again_after_redis_forgot_it(
    redis_server: RedisServer,
) -> None:
    """The store runs its script by SHA on its own connection: after SCRIPT FLUSH (or a
    restarted server) it loads the script again instead of failing the request."""
    store = RedisStore(redis_server.url, prefix=f"t{time.monotonic_ns()}")
    try:
        assert (await admit(store, [rpm(5)], "r1", NOW, NOW + 60)).refused is None
        with socket.create_connection(("127.0.0.1", redis_server.port)) as conn:
            conn.sendall(b"SCRIPT FLUSH\r\n")
            assert conn.recv(16).startswith(b"+OK")
        assert (await admit(store, [rpm(5)], "r2", NOW, NOW + 60)).refused is None
        assert (await store.used([rpm(5)], NOW))["k:a:rpm"] == 2
    finally:
        await store.aclose()


async def test_a_restarted_redis_costs_no_request(redis_server: RedisServer) -> None:
    """The connection the script rides on dies with the server; the next call opens a
    fresh one (one retry, as the client library does for every other command)."""
    store = RedisStore(redis_server.url, prefix=f"t{time.monotonic_ns()}")
    try:
        assert (await admit(store, [rpm(5)], "r1", NOW, NOW + 60)).refused is None
        redis_server.stop()
        redis_server.start()
        assert (await admit(store, [rpm(5)], "r2", NOW, NOW + 60)).refused is None
    finally:
        await store.aclose()
