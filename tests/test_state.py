"""The state store under strain: bounded, never blocking the gateway, reported truthfully.

Findings of the exact-accounting issue about the store: what grows with clients' choices,
what a locked file or a silent Redis does to everyone else's requests, what
``/health/ready`` says, and a state file damaged under a running gateway.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import MakeGateway
from tests.servers import FakeProvider, Gateway
from tests.test_access import HI, KEYS, SERVICE, key_entry
from tests.test_accounting import aliases, begin, post, store_env, today
from tests.test_serve import Served, processes, serve

__all__ = ["processes", "store_env"]  # fixtures shared with their modules

OPERATOR = {"authorization": f"Bearer {SERVICE}"}


def ready(gateway: Gateway) -> dict[str, Any]:
    answer = httpx.get(f"{gateway.url}/health/ready", headers=OPERATOR, timeout=10)
    return dict(answer.json())


# --- what grows with clients' choices ----------------------------------------------------


def test_ledger_rows_only_for_what_cost_something_and_models_bounded(
    make_gateway: MakeGateway, fake: FakeProvider, store_env: dict[str, str]
) -> None:
    gateway = begin(make_gateway, fake, aliases(key_entry("a")), store_env)
    # Forty made-up names that fail, and forty that a provider answers.
    for n in range(40):
        assert post(gateway, "a", {"model": f"nope-{n}"}).status_code == 404
        assert post(gateway, "a", {"model": f"openai:made-up-{n}"}).status_code == 200
    assert post(gateway, "a", {}).status_code == 200  # smart: a model the file names
    rows = today(gateway, "a")
    assert {row["model"] for row in rows} == {"openai:gpt-4", "other"}
    other = next(row for row in rows if row["model"] == "other")
    assert other["requests"] == 40 and other["input_tokens"] == 200


def test_the_console_stays_small_and_quick_whatever_clients_name(
    make_gateway: MakeGateway, fake: FakeProvider, store_env: dict[str, str]
) -> None:
    keys = "".join(key_entry(name) for name in ("a", "b"))
    gateway = begin(make_gateway, fake, aliases(keys), store_env)

    async def many() -> None:
        limits = httpx.Limits(max_connections=20)
        async with httpx.AsyncClient(timeout=20, limits=limits) as client:
            for batch in range(10):
                await asyncio.gather(
                    *(
                        client.post(
                            f"{gateway.base_url}/chat/completions",
                            json={"model": f"openai:m-{batch}-{n}", "messages": HI},
                            headers={"authorization": f"Bearer {KEYS['a']}"},
                        )
                        for n in range(30)
                    )
                )

    asyncio.run(many())
    time.sleep(0.1)
    started = time.perf_counter()
    console = httpx.get(f"{gateway.url}/console/api/overview", headers=OPERATOR, timeout=10)
    assert console.status_code == 200
    assert time.perf_counter() - started < 0.5
    assert len(console.content) < 64 * 1024, len(console.content)
    models = console.json()["traffic"]["models"]
    assert len(models) <= 21 and any(m["model"] == "other" for m in models)


def test_usage_is_paginated(
    make_gateway: MakeGateway, fake: FakeProvider, store_env: dict[str, str]
) -> None:
    keys = "".join(key_entry(name) for name in ("a", "b", "c", "x"))
    gateway = begin(make_gateway, fake, aliases(keys), store_env)
    for name in "abc":
        assert post(gateway, name, {}).status_code == 200
    time.sleep(0.1)
    seen: list[str] = []
    after: str | None = None
    while True:
        params = {"limit": "2", **({"after": after} if after else {})}
        page = httpx.get(f"{gateway.url}/admin/usage", params=params, headers=OPERATOR).json()
        assert len(page["keys"]) <= 2 and page["total_keys"] == 4
        seen += [key["id"] for key in page["keys"]]
        assert {row["key"] for row in page["spend"]["today"]} <= {k["id"] for k in page["keys"]}
        after = page["next"]
        if after is None:
            break
    assert seen == ["a", "b", "c", "x"]
    bad = httpx.get(f"{gateway.url}/admin/usage", params={"limit": "x"}, headers=OPERATOR)
    assert bad.status_code == 400


# --- a store that is slow or down blocks no one else --------------------------------------


class LockedStateFile:
    """Another process holding the state file's write lock (a backup, a shell)."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    def __enter__(self) -> LockedStateFile:
        self._db.execute("begin immediate")
        return self

    def __exit__(self, *exc: object) -> None:
        self._db.execute("rollback")
        self._db.close()


def test_a_locked_state_file_blocks_nothing_else(
    make_gateway: MakeGateway, fake: FakeProvider, tmp_path: Path
) -> None:
    state = {"RUNESTONE_STATE_PATH": str(tmp_path / "state.sqlite3")}
    gateway = begin(make_gateway, fake, aliases(key_entry("a", rpm="100000")), state)
    assert post(gateway, "a", {}).status_code == 200  # the store is open

    async def meanwhile() -> tuple[list[float], list[int]]:
        async with httpx.AsyncClient(timeout=20) as client:

            async def keyed() -> int:
                answer = await client.post(
                    f"{gateway.base_url}/chat/completions",
                    json={"model": "smart", "messages": HI},
                    headers={"authorization": f"Bearer {KEYS['a']}"},
                )
                return answer.status_code

            pressure = [asyncio.ensure_future(keyed()) for _ in range(40)]
            waits = []
            for _ in range(10):
                started = time.perf_counter()
                assert (await client.get(f"{gateway.url}/health/live")).status_code == 200
                waits.append(time.perf_counter() - started)
                await asyncio.sleep(0.02)
            return waits, list(await asyncio.gather(*pressure))

    with LockedStateFile(tmp_path / "state.sqlite3"):
        waits, statuses = asyncio.run(meanwhile())
    assert max(waits) < 0.1, waits
    assert set(statuses) == {200}  # rate limits fail open: served, uncounted


class Blackhole:
    """A TCP server that accepts connections and never answers (a Redis gone silent)."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(100)
        self.port = self._sock.getsockname()[1]
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._held.append(conn)

    def close(self) -> None:
        self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(5)
        for conn in self._held:
            conn.close()


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    hole = Blackhole()
    yield hole
    hole.close()


def test_a_silent_redis_costs_no_request_more_than_the_store_timeout(
    make_gateway: MakeGateway, fake: FakeProvider, blackhole: Blackhole
) -> None:
    env = {"RUNESTONE_REDIS_URL": f"redis://127.0.0.1:{blackhole.port}/0"}
    gateway = begin(make_gateway, fake, aliases(key_entry("a", rpm="1000")), env)

    async def burst() -> list[tuple[int, float]]:
        async with httpx.AsyncClient(timeout=20) as client:

            async def one(delay: float) -> tuple[int, float]:
                await asyncio.sleep(delay)
                started = time.perf_counter()
                answer = await client.post(
                    f"{gateway.base_url}/chat/completions",
                    json={"model": "echo", "messages": HI},
                    headers={"authorization": f"Bearer {KEYS['a']}"},
                )
                return answer.status_code, time.perf_counter() - started

            return list(await asyncio.gather(*(one(n * 0.05) for n in range(30))))

    results = asyncio.run(burst())
    assert {status for status, _ in results} == {200}  # rate limits fail open
    slowest = max(seconds for _, seconds in results)
    assert slowest < 0.5 + 0.15, sorted(seconds for _, seconds in results)


# --- /health/ready tells the truth about the store ------------------------------------------


def test_ready_says_when_the_state_file_cannot_be_opened(
    make_gateway: MakeGateway, fake: FakeProvider, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {"RUNESTONE_STATE_PATH": str(blocker / "state.sqlite3")}
    gateway = begin(make_gateway, fake, aliases(key_entry("a", rpm="10")), env)
    assert post(gateway, "a", {}).status_code == 200  # rate limits fail open
    store = ready(gateway)["limits_store"]
    assert store["ok"] is False and "cannot open" in store["error"]
    public = httpx.get(f"{gateway.url}/health/ready").json()
    assert public["limits_store"]["ok"] is False


def test_ready_says_when_the_state_file_cannot_be_written(
    make_gateway: MakeGateway, fake: FakeProvider, tmp_path: Path
) -> None:
    env = {"RUNESTONE_STATE_PATH": str(tmp_path / "state.sqlite3")}
    gateway = begin(make_gateway, fake, aliases(key_entry("a", rpm="10")), env)
    assert post(gateway, "a", {}).status_code == 200
    assert ready(gateway)["limits_store"]["ok"] is True
    with LockedStateFile(tmp_path / "state.sqlite3"):
        store = ready(gateway)["limits_store"]
    assert store["ok"] is False and "cannot be written" in store["error"]
    assert ready(gateway)["limits_store"]["ok"] is True


def test_ready_says_when_the_state_file_is_deleted(
    make_gateway: MakeGateway, fake: FakeProvider, tmp_path: Path
) -> None:
    path = tmp_path / "state.sqlite3"
    gateway = begin(
        make_gateway, fake, aliases(key_entry("a", rpm="10")), {"RUNESTONE_STATE_PATH": str(path)}
    )
    assert post(gateway, "a", {}).status_code == 200
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    store = ready(gateway)["limits_store"]
    assert store["ok"] is False and "deleted" in store["error"]


def test_a_state_file_cut_short_under_the_gateway_does_not_kill_it(
    tmp_path: Path, processes: list[Served]
) -> None:
    state = tmp_path / "state.sqlite3"
    keys = key_entry("a", rpm="1000", budgets="[{usd: 5, per: day}]")
    served = serve(
        tmp_path,
        aliases="aliases:\n  echo: mock:echo\nkeys:\n" + keys,
        RUNESTONE_STATE_PATH=str(state),
    )
    processes.append(served)

    def ask() -> int:
        return httpx.post(
            f"{served.url}/v1/chat/completions",
            json={"model": "echo", "messages": HI},
            headers={"authorization": f"Bearer {KEYS['a']}"},
            timeout=10,
        ).status_code

    assert ask() == 200
    time.sleep(0.1)
    os.truncate(f"{state}-shm", 0)  # what another host's process on a shared volume may do
    assert [ask() for _ in range(5)] == [200] * 5
    assert served.process.poll() is None
