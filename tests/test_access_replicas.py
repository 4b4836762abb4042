"""Three ``runestone serve`` processes sharing one real ``redis-server``: limits and
budgets hold on the sum of their traffic exactly as on one process, and a Redis outage
gets the documented open/closed behaviour, no hang, and recovery when it returns."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runestone.access import digest
from tests.redis_server import RedisServer
from tests.servers import same_minute
from tests.test_serve import Served, processes, serve

__all__ = ["processes"]  # the fixture, shared with test_serve

SERVICE = "service-token-replicas"
KEYS = {name: f"rsk-replica-{name}-abcdef" for name in "abcdef"}
BODY = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def entry(name: str, settings: str) -> str:
    return f"  {name}:\n    hash: sha256:{digest(KEYS[name])}\n    {settings}\n"


ALIASES = (
    "aliases:\n  echo: mock:echo\n"
    'prices:\n  "mock:echo": {input: 100, output: 1000}\n'
    "keys:\n"
    + entry("a", "rpm: 10")  # spread over the three replicas
    + entry("b", "rpm: 10")  # all on one
    + entry("c", "budgets: [{usd: 0.03, per: day}]")  # spread
    + entry("d", "budgets: [{usd: 0.03, per: day}]")  # all on one
    + entry("e", "budgets: [{usd: 10, per: day}]")  # budgets fail closed
    + entry("f", "rpm: 1000")  # rate limits fail open
)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    server.start()
    yield server
    server.stop()


def ask(url: str, key: str, timeout: float = 10) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json=BODY,
        headers={"authorization": f"Bearer {KEYS[key]}"},
        timeout=timeout,
    )


def until_refused(urls: list[str], key: str) -> int:
    """Requests one after another, round robin over ``urls``, until one is refused."""
    for n in range(100):
        answer = ask(urls[n % len(urls)], key)
        if answer.status_code != 200:
            assert answer.status_code == 429, answer.text
            return n
    raise AssertionError("never refused")


def test_three_replicas_enforce_limits_on_the_sum(
    tmp_path: Path, processes: list[Served], redis: RedisServer
) -> None:
    env = {"RUNESTONE_REDIS_URL": redis.url, "RUNESTONE_SERVICE_TOKEN": SERVICE}
    for n in range(3):
        directory = tmp_path / f"replica{n}"
        directory.mkdir()
        processes.append(serve(directory, aliases=ALIASES, **env))
    urls = [p.url for p in processes]

    async def burst(key: str, spread: bool) -> list[int]:
        async with httpx.AsyncClient(timeout=10) as client:
            answers = await asyncio.gather(
                *(
                    client.post(
                        f"{urls[n % 3 if spread else 0]}/v1/chat/completions",
                        json=BODY,
                        headers={"authorization": f"Bearer {KEYS[key]}"},
                    )
                    for n in range(15)
                )
            )
        return [a.status_code for a in answers]

    same_minute()
    spread, single = asyncio.run(burst("a", True)), asyncio.run(burst("b", False))
    assert spread.count(200) == single.count(200) == 10
    assert spread.count(429) == single.count(429) == 5

    # A budget: as many requests pass spread over three replicas as on one.
    passed_spread, passed_single = until_refused(urls, "c"), until_refused(urls[:1], "d")
    assert passed_spread == passed_single > 1
    time.sleep(0.2)
    report = httpx.get(
        f"{urls[2]}/admin/usage", headers={"authorization": f"Bearer {SERVICE}"}
    ).json()
    for key in ("c", "d"):
        owner = next(k for k in report["keys"] if k["id"] == key)
        (budget,) = owner["limits"]
        assert 0 < budget["used"] <= 0.03 and budget["reserved"] == 0
    spend = {row["key"]: row for row in report["spend"]["today"]}
    assert spend["c"]["requests"] == passed_spread + 0  # refusals book nothing

    # Redis goes away: rate limits fail open, budgets closed, and nothing hangs.
    redis.stop()
    started = time.monotonic()
    assert ask(urls[0], "f").status_code == 200
    closed = ask(urls[1], "e")
    assert time.monotonic() - started < 3
    assert closed.status_code == 503 and closed.json()["error"]["code"] == "state_unavailable"
    assert closed.json()["error"]["retryable"] is True
    ready = httpx.get(
        f"{urls[1]}/health/ready", headers={"authorization": f"Bearer {SERVICE}"}
    ).json()
    assert ready["limits_store"]["ok"] is False and "redis" in ready["limits_store"]["error"]

    # It comes back (with what it had persisted): budgets work again, spend is kept.
    redis.start()
    deadline = time.monotonic() + 15
    while ask(urls[1], "e").status_code != 200:
        assert time.monotonic() < deadline, "never recovered"
        time.sleep(0.2)
    assert ask(urls[2], "c").status_code == 429  # the spent budget is still spent
