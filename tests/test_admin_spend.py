"""Budget alerts (to real webhook servers, once per window and threshold across two
replicas), the budget gauge, and spend per end user and tag with an end user's budget,
on both stores."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from runestone.access._attribution import MAX_NAMES, OTHER, Names
from tests.servers import FakeProvider
from tests.test_admin_api import ADMIN, BODY, admin, start_pair, store_env, within
from tests.test_serve import Served, processes

__all__ = ["processes", "store_env"]


class Hooks:
    """What the webhook servers received: the JSON one, and the Slack one (failing its
    first call, to be retried)."""

    def __init__(self, fake: FakeProvider) -> None:
        self.json: list[dict[str, Any]] = []
        self.slack: list[dict[str, Any]] = []
        self.slack_failures = 1
        fake.on("", self._receive)

    async def _receive(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        if request.path == "/slack":
            if self.slack_failures:
                self.slack_failures -= 1
                return web.Response(status=503)
            self.slack.append(body)
        else:
            self.json.append(body)
        return web.json_response({"ok": True})


def chat(url: str, secret: str, **extra: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {secret}", **extra.pop("headers", {})}
    return httpx.post(f"{url}/v1/chat/completions", json=BODY | extra, headers=headers, timeout=10)


def costs(url: str, **extra: Any) -> tuple[float, float]:
    """What one request of ``BODY | extra`` costs, and what it reserves (its worst case:
    the larger its body, the more)."""
    probe = admin(url, "POST", "/admin/keys", json={"id": "probe"}).json()["secret"]
    cost = float(chat(url, probe, **extra).headers["x-runestone-cost-usd"])
    tiny = {"budgets": [{"usd": cost / 100, "per": "day"}]}
    admin(url, "PATCH", "/admin/keys/probe", json=tiny)
    message = chat(url, probe, **extra).json()["error"]["message"]
    reserve = float(message.split("reservation of $")[1].split()[0])
    return cost, reserve


def gauge(url: str, owner: str) -> float | None:
    text = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {ADMIN}"}).text
    for line in text.splitlines():
        if line.startswith(f'runestone_budget_used_ratio{{budget="usd/day",owner="{owner}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_budget_alerts_go_out_once_per_threshold_across_replicas(
    tmp_path: Path, processes: list[Served], store_env: dict[str, str], fake: FakeProvider
) -> None:
    hooks = Hooks(fake)
    env = store_env | {"RUNESTONE_ALERT_WEBHOOKS": f"{fake.url}/hook,slack:{fake.url}/slack"}
    one, two = start_pair(tmp_path, processes, env)
    _, reserve = costs(one.url)
    # Room for the 80% alert before a reservation no longer fits.
    budget = {"usd": round(reserve * 6, 6), "per": "day"}
    secret = admin(one.url, "POST", "/admin/keys", json={"id": "spender", "budgets": [budget]})
    secret = secret.json()["secret"]
    within(1.0, lambda: chat(two.url, secret).status_code == 200)
    statuses = []
    while not statuses or statuses[-1] == 200:
        statuses.append(chat((one, two)[len(statuses) % 2].url, secret).status_code)
        assert len(statuses) < 200
    assert statuses[-1] == 429 and len(statuses) > 10

    def spender() -> list[dict[str, Any]]:
        return [a for a in hooks.json if a["owner"] == "key:spender"]

    def spender_slack() -> list[dict[str, Any]]:
        return [a for a in hooks.slack if "key:spender" in a["text"]]

    within(10.0, lambda: len(spender()) == 3 and len(spender_slack()) == 3)
    time.sleep(0.5)  # nothing more comes: once per window and threshold, on any replica
    alerts = spender()
    assert len(spender()) == 3 and len(spender_slack()) == 3
    assert [a["threshold_percent"] for a in alerts] == [50, 80, 100]
    assert all(a["budget"] == "usd/day" and a["limit_usd"] == budget["usd"] for a in alerts)
    assert [a["used_percent"] >= a["threshold_percent"] for a in alerts] == [True, True, False]
    assert alerts[2]["exhausted"] is True  # refused: the rest of the budget fits no request
    assert "has used" in spender_slack()[0]["text"]  # its first call failed and was retried
    shares = [gauge(one.url, "key:spender"), gauge(two.url, "key:spender")]
    assert None not in shares  # each replica shows the share its last request saw
    last = alerts[2]["used_percent"] / 100
    assert max(s or 0 for s in shares) == pytest.approx(last, abs=0.01)
    logs = one.stderr() + two.stderr()
    assert logs.count("budget alert: Runestone: key:spender") == 3  # one replica each


def test_spend_per_end_user_and_tag_with_an_end_user_budget(
    tmp_path: Path, processes: list[Served], store_env: dict[str, str]
) -> None:
    one, two = start_pair(tmp_path, processes, store_env)
    cost, reserve = costs(one.url, safety_identifier="ana")
    per_user = {"usd": round(reserve + cost * 1.5, 8), "per": "day"}  # two requests fit
    made = admin(one.url, "POST", "/admin/keys", json={"id": "app", "end_user_budget": per_user})
    secret = made.json()["secret"]
    tags = {"x-runestone-tags": "checkout, beta"}
    # OpenAI's user, its safety_identifier, and the header (which wins).
    assert chat(one.url, secret, user="ana", headers=tags).status_code == 200
    assert chat(one.url, secret, safety_identifier="ana").status_code == 200
    as_ana = {"safety_identifier": "zzz", "headers": {"x-runestone-user": "ana"}}
    refused = chat(one.url, secret, **as_ana)
    assert refused.status_code == 429
    assert "end user 'ana' of key 'app'" in refused.json()["error"]["message"]
    within(1.0, lambda: chat(two.url, secret, user="bo").status_code == 200)
    assert chat(two.url, secret, **as_ana).status_code == 429  # the same budget there
    answer = httpx.post(
        f"{two.url}/v1/messages",
        json={
            "model": "echo",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}],
            "metadata": {"user_id": "cy"},
        },
        headers={"x-api-key": secret, "anthropic-version": "2023-06-01"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    bad = chat(one.url, secret, headers={"x-runestone-tags": "ok, not ok!"})
    assert bad.status_code == 400 and "x-runestone-tags" in bad.json()["error"]["message"]

    def report() -> dict[str, Any]:
        found = admin(one.url, "GET", "/admin/usage", params={"key": "app"})
        return dict(found.json())

    within(3.0, lambda: len(report()["end_users"]["today"]) == 3)
    users = {row["name"]: row for row in report()["end_users"]["today"]}
    assert users["ana"]["requests"] == 2 and users["bo"]["requests"] == 1
    assert users["cy"]["requests"] == 1
    assert users["ana"]["usd"] == pytest.approx(cost * 2, rel=1e-6)
    tagged = {row["name"]: row["requests"] for row in report()["tags"]["today"]}
    assert tagged == {"beta": 1, "checkout": 1}
    mine = admin(one.url, "GET", "/admin/keys/self/usage", token=secret).json()
    assert {row["name"] for row in mine["end_users"]["month"]} == {"ana", "bo", "cy"}
    stored = orjson.dumps(mine)
    assert b"hi" not in stored.replace(b"his", b"")  # no prompt is booked


def test_end_user_names_are_bounded_per_key_and_day() -> None:
    names = Names()
    booked = {names("2026-12-07", "app", "user", f"user-{n}") for n in range(MAX_NAMES + 50)}
    assert len(booked) == MAX_NAMES + 1 and OTHER in booked
    assert names("2026-12-07", "app", "user", "user-1") == "user-1"  # a known name stays
    assert names("2026-12-07", "other-key", "user", "new") == "new"  # bounds are per key
    assert names("2026-12-08", "app", "user", "late") == "late"  # and per day


async def test_a_background_task_that_loses_its_cancellation_still_stops() -> None:
    """As the keyring's poll does when a cancellation meets a store call's own timeout
    (it becomes a TimeoutError, handled as a store failure): the gateway's shutdown
    cancels again, so the task ends and the shutdown does not hang."""
    from runestone._gateway import _stop

    gone = asyncio.Event()

    async def swallows_one_cancel() -> None:
        # Lost, as in a store call that timed out at the same moment:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
        try:
            await asyncio.Event().wait()
        finally:
            gone.set()

    task = asyncio.create_task(swallows_one_cancel())
    await asyncio.sleep(0)
    started = time.monotonic()
    await _stop(task)
    assert gone.is_set() and task.done() and time.monotonic() - started < 1.0
