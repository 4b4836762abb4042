"""Keys, rate limits and budgets (the keys-and-limits issue), through the real app.

Each test starts a real gateway on loopback against the fake provider, with its own
SQLite state file; the windows' clock is the gateway's own ``access.clock``, moved
forward by the tests instead of waiting for a minute to pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from aiohttp import web

from runestone.access import digest
from tests.conftest import MakeGateway
from tests.servers import FakeProvider, Gateway, completion, keep, same_minute
from tests.test_cli import run
from tests.test_telemetry import scrape, value

HI = [{"role": "user", "content": "hi"}]
KEYS = {name: f"rsk-test-{name}-0123456789" for name in ("a", "b", "c", "old", "x")}
SERVICE = "service-token-for-tests"
# A dollar per thousand output tokens, a hundredth of that per input token: the fake's
# answer (5 in, 7 out) costs $0.00705; a reservation with max_tokens=7 is about $0.0085.
PRICES = """
prices:
  "openai:gpt-4": {input: 10, output: 1000}
"""


def key_entry(name: str, **settings: str) -> str:
    lines = [f"  {name}:", f"    hash: sha256:{digest(KEYS[name])}"]
    lines += [f"    {k}: {v}" for k, v in settings.items()]
    return "\n".join(lines) + "\n"


def aliases_with(keys: str, teams: str = "", extra: str = "") -> str:
    text = "defaults: {retries: 0}\naliases:\n  smart: openai:gpt-4\n  echo: mock:echo\n"
    text += PRICES + "keys:\n" + keys
    if teams:
        text += "teams:\n" + teams
    return text + extra


def start(make_gateway: MakeGateway, tmp_path: Path, yaml: str, **env: str) -> Gateway:
    state = {"RUNESTONE_STATE_PATH": str(tmp_path / "state.sqlite3"), **env}
    return make_gateway(yaml, env=state, service_token=SERVICE)


def call(gateway: Gateway, key: str | None, model: str = "smart", **body: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(
        f"{gateway.base_url}/chat/completions",
        json={"model": model, "messages": HI, **body},
        headers=headers,
        timeout=10,
    )


def code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


def advance(gateway: Gateway, seconds: float) -> None:
    access = gateway.app.gateway.access
    previous = access.clock
    access.clock = lambda: previous() + seconds


def usage(gateway: Gateway, key: str | None = None) -> dict[str, Any]:
    response = httpx.get(
        f"{gateway.url}/admin/usage",
        params={"key": key} if key else None,
        headers={"authorization": f"Bearer {SERVICE}"},
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def limit(report: dict[str, Any], owner: str, name: str, kind: str = "keys") -> dict[str, Any]:
    entry = next(o for o in report[kind] if o["id"] == owner)
    return dict(next(lim for lim in entry["limits"] if lim["limit"] == name))


# --- who may call ------------------------------------------------------------------------


def test_key_auth_matrix(make_gateway: MakeGateway, tmp_path: Path) -> None:
    keys = key_entry("a", models='[smart, "mock:*"]') + key_entry("old", expires="2020-01-01")
    gateway = start(make_gateway, tmp_path, aliases_with(keys))
    assert call(gateway, KEYS["a"]).status_code == 200
    assert call(gateway, KEYS["a"], "mock:echo").status_code == 200

    wrong = call(gateway, "rsk-not-a-key")
    assert wrong.status_code == 401 and code(wrong) == "unauthorized"
    assert "rsk-not-a-key" not in wrong.text
    missing = call(gateway, None)
    assert missing.status_code == 401 and code(missing) == "unauthorized"

    expired = call(gateway, KEYS["old"])
    assert expired.status_code == 401 and code(expired) == "key_expired"
    assert "2020-01-01" in expired.json()["error"]["message"]

    refused = call(gateway, KEYS["a"], "echo")
    assert refused.status_code == 403 and code(refused) == "model_not_allowed"
    assert refused.json()["error"]["retryable"] is False

    # The operators' own token opens every model, keys or not.
    assert call(gateway, SERVICE, "echo").status_code == 200
    # Anthropic clients send x-api-key; the same key works on the Messages API.
    client = keep(anthropic.Anthropic(base_url=gateway.url, api_key=KEYS["a"], max_retries=0))
    message = client.messages.create(
        model="mock:echo", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content
    with pytest.raises(anthropic.AuthenticationError):
        keep(
            anthropic.Anthropic(base_url=gateway.url, api_key=KEYS["old"], max_retries=0)
        ).messages.create(
            model="mock:echo", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )


def test_keys_never_logged_and_ids_are(
    make_gateway: MakeGateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = start(make_gateway, tmp_path, aliases_with(key_entry("a")))
    with caplog.at_level(logging.DEBUG):
        assert call(gateway, KEYS["a"]).status_code == 200
        assert call(gateway, KEYS["a"] + "x").status_code == 401
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert KEYS["a"] not in text
    assert '"key":"a"' in text  # the request log names the key by its id
    samples = scrape(gateway.url, SERVICE)
    assert value(samples, "runestone_key_requests_total", key="a", status="200") == 1
    assert value(samples, "runestone_key_cost_usd_total", key="a") == pytest.approx(0.00705)


def test_a_key_added_by_reload_works_without_restart(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    gateway = start(make_gateway, tmp_path, aliases_with(key_entry("a")))
    assert call(gateway, KEYS["b"]).status_code == 401
    path = Path(gateway.app.aliases.path)
    path.write_text(aliases_with(key_entry("a") + key_entry("b")))
    deadline = time.monotonic() + 10
    while call(gateway, KEYS["b"]).status_code != 200:
        assert time.monotonic() < deadline, "the new key never worked"
        time.sleep(0.1)


# --- rate limits -------------------------------------------------------------------------


def test_rpm_hit_and_reset(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gateway = start(make_gateway, tmp_path, aliases_with(key_entry("a", rpm="3")))
    first = call(gateway, KEYS["a"])
    assert first.headers["x-ratelimit-limit-requests"] == "3"
    assert first.headers["x-ratelimit-remaining-requests"] == "2"
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    assert [call(gateway, KEYS["a"]).status_code for _ in range(2)] == [200, 200]
    refused = call(gateway, KEYS["a"])
    assert refused.status_code == 429 and code(refused) == "rate_limited"
    assert refused.json()["error"]["retryable"] is True
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-should-retry"] == "true"
    advance(gateway, 60)
    assert call(gateway, KEYS["a"]).status_code == 200


def test_tpm_counts_provider_usage_and_resets(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gateway = start(make_gateway, tmp_path, aliases_with(key_entry("a", tpm="20")))
    assert call(gateway, KEYS["a"]).status_code == 200  # 12 tokens
    second = call(gateway, KEYS["a"])  # 12 < 20: still under
    assert second.status_code == 200
    assert second.headers["x-ratelimit-remaining-tokens"] == "8"
    time.sleep(0.05)  # settlements are written in the next turn of the loop
    refused = call(gateway, KEYS["a"])  # 24 >= 20
    assert refused.status_code == 429 and code(refused) == "rate_limited"
    assert "tokens per minute" in refused.json()["error"]["message"]
    advance(gateway, 60)
    assert call(gateway, KEYS["a"]).status_code == 200


def test_max_parallel_hit_and_released(
    make_gateway: MakeGateway, fake: FakeProvider, tmp_path: Path
) -> None:
    async def slow(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        await asyncio.sleep(0.5)
        return web.json_response(completion(body["model"]))

    fake.on("gpt-4", slow)
    gateway = start(make_gateway, tmp_path, aliases_with(key_entry("a", max_parallel="2")))

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=10) as client:
            return list(
                await asyncio.gather(
                    *(
                        client.post(
                            f"{gateway.base_url}/chat/completions",
                            json={"model": "smart", "messages": HI},
                            headers={"authorization": f"Bearer {KEYS['a']}"},
                        )
                        for _ in range(3)
                    )
                )
            )

    same_minute()
    statuses = sorted(r.status_code for r in asyncio.run(burst()))
    assert statuses == [200, 200, 429]
    time.sleep(0.05)
    assert call(gateway, KEYS["a"]).status_code == 200  # the slots came back


def test_team_limits_are_shared_by_its_keys(make_gateway: MakeGateway, tmp_path: Path) -> None:
    keys = key_entry("a", team="search") + key_entry("b", team="search") + key_entry("c")
    gateway = start(make_gateway, tmp_path, aliases_with(keys, "  search: {rpm: 3}\n"))
    assert [call(gateway, KEYS[k]).status_code for k in "aba"] == [200, 200, 200]
    refused = call(gateway, KEYS["b"])
    assert refused.status_code == 429 and "team 'search'" in refused.json()["error"]["message"]
    assert call(gateway, KEYS["c"]).status_code == 200  # another team's key is unaffected


# --- budgets -----------------------------------------------------------------------------


def test_budget_refuses_until_the_window_resets(make_gateway: MakeGateway, tmp_path: Path) -> None:
    budget = key_entry("a", budgets="[{usd: 0.03, per: minute}]")
    gateway = start(make_gateway, tmp_path, aliases_with(budget))
    same_minute()
    statuses = []
    for _ in range(5):
        statuses.append(call(gateway, KEYS["a"], max_tokens=7).status_code)
        time.sleep(0.02)
    assert statuses == [200, 200, 200, 200, 429]
    refused = call(gateway, KEYS["a"], max_tokens=7)
    error = refused.json()["error"]
    assert error["code"] == "budget_exceeded" and error["retryable"] is False
    assert refused.headers["x-should-retry"] == "false"
    assert "resets at" in error["message"] and 0 < int(refused.headers["retry-after"]) <= 60
    spent = limit(usage(gateway), "a", "usd/minute")
    assert spent["used"] == pytest.approx(4 * 0.00705)
    assert spent["reserved"] == 0
    advance(gateway, 60)
    assert call(gateway, KEYS["a"], max_tokens=7).status_code == 200


def test_rolling_budget_counts_the_last_hour(make_gateway: MakeGateway, tmp_path: Path) -> None:
    budget = key_entry("a", budgets="[{usd: 0.02, per: hour, rolling: true}]")
    gateway = start(make_gateway, tmp_path, aliases_with(budget))
    assert call(gateway, KEYS["a"], max_tokens=7).status_code == 200
    time.sleep(0.02)
    advance(gateway, 1800)  # half an hour later the first spend still counts
    assert call(gateway, KEYS["a"], max_tokens=7).status_code == 200
    time.sleep(0.02)
    assert call(gateway, KEYS["a"], max_tokens=7).status_code == 429
    advance(gateway, 1800 + 150)  # the first request's bucket has left the window
    assert call(gateway, KEYS["a"], max_tokens=7).status_code == 200


def test_fifty_parallel_requests_never_overshoot_a_nearly_spent_budget(
    make_gateway: MakeGateway, fake: FakeProvider, tmp_path: Path
) -> None:
    async def slowish(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        await asyncio.sleep(0.2)
        return web.json_response(completion(body["model"]))

    fake.on("gpt-4", slowish)
    budget = key_entry("a", budgets="[{usd: 0.05, per: day}]")
    gateway = start(make_gateway, tmp_path, aliases_with(budget))

    async def fifty() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=20, limits=httpx.Limits(max_connections=60)) as c:
            return list(
                await asyncio.gather(
                    *(
                        c.post(
                            f"{gateway.base_url}/chat/completions",
                            json={"model": "smart", "messages": HI, "max_tokens": 7},
                            headers={"authorization": f"Bearer {KEYS['a']}"},
                        )
                        for _ in range(50)
                    )
                )
            )

    answers = asyncio.run(fifty())
    passed = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code == 429]
    assert len(passed) + len(refused) == 50
    assert {code(r) for r in refused} == {"budget_exceeded"}
    # Each reservation (~$0.008: every body byte an input token, max_tokens output)
    # covers its request's real cost ($0.00705): with max_tokens given the budget is
    # never overshot at all, however the 50 interleave.
    assert 1 <= len(passed) <= 7
    time.sleep(0.1)
    spent = limit(usage(gateway), "a", "usd/day")
    assert spent["used"] == pytest.approx(len(passed) * 0.00705)
    assert spent["used"] <= 0.05
    assert spent["reserved"] == 0


def test_spend_survives_a_restart(make_gateway: MakeGateway, tmp_path: Path) -> None:
    budget = key_entry("a", budgets="[{usd: 0.014, per: day}]")
    first = start(make_gateway, tmp_path, aliases_with(budget))
    assert call(first, KEYS["a"], max_tokens=7).status_code == 200
    time.sleep(0.05)
    first.server.should_exit = True  # shut the first down
    second = start(make_gateway, tmp_path, aliases_with(budget))
    assert limit(usage(second), "a", "usd/day")["used"] == pytest.approx(0.00705)
    refused = call(second, KEYS["a"], max_tokens=7)  # 0.00705 + ~0.008 > 0.014
    assert refused.status_code == 429 and code(refused) == "budget_exceeded"


def test_streams_settle_their_usage(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gateway = start(make_gateway, tmp_path, aliases_with(key_entry("a", tpm="1000")))
    client = keep(openai.OpenAI(base_url=gateway.base_url, api_key=KEYS["a"], max_retries=0))
    stream = client.chat.completions.create(
        model="smart", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    time.sleep(0.05)
    report = usage(gateway, "a")
    assert limit(report, "a", "tpm")["used"] == 8  # 5 in, 3 out, as the provider said
    (row,) = report["spend"]["today"]
    assert row["key"] == "a" and row["model"] == "openai:gpt-4" and row["requests"] == 1


# --- operators ---------------------------------------------------------------------------


def test_admin_usage_is_for_operators(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gateway = start(make_gateway, tmp_path, aliases_with(key_entry("a")))
    refused = httpx.get(
        f"{gateway.url}/admin/usage", headers={"authorization": f"Bearer {KEYS['a']}"}
    )
    assert refused.status_code == 403  # a good key, not an operator's
    assert refused.json()["error"]["code"] == "forbidden"
    assert (
        httpx.get(
            f"{gateway.url}/admin/usage",
            params={"key": "nope"},
            headers={"authorization": f"Bearer {SERVICE}"},
        ).status_code
        == 404
    )


def test_keys_create_prints_a_working_entry_and_usage_reads_the_store(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    env = {"RUNESTONE_STATE_PATH": str(tmp_path / "state.sqlite3")}
    made = run("keys", "create", "team-x", "--rpm", "5", "--budget", "10/day", env=env)
    assert made.returncode == 0, made.stderr
    key = next(
        line.split(": ", 1)[1] for line in made.stdout.splitlines() if line.startswith("key:")
    )
    entry = made.stdout.split("keys:\n", 1)[1]
    assert key not in entry and "rpm: 5" in entry and "per: day" in entry
    yaml = aliases_with(entry)
    gateway = start(make_gateway, tmp_path, yaml)
    assert call(gateway, key).headers["x-ratelimit-limit-requests"] == "5"
    time.sleep(0.05)
    path = tmp_path / "cli-aliases.yaml"
    path.write_text(yaml)
    shown = run("keys", "usage", "team-x", "--file", str(path), env=env)
    assert shown.returncode == 0, shown.stderr
    assert "key team-x" in shown.stdout and "openai:gpt-4" in shown.stdout
    assert "$0.0070" in shown.stdout


def test_every_refusal_is_in_the_envelope_of_its_protocol(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    gateway = start(make_gateway, tmp_path, aliases_with(key_entry("a", rpm="1")))
    client = keep(anthropic.Anthropic(base_url=gateway.url, api_key=KEYS["a"], max_retries=0))
    ask: Callable[[], Any] = lambda: client.messages.create(  # noqa: E731
        model="smart", max_tokens=7, messages=[{"role": "user", "content": "hi"}]
    )
    ask()
    with pytest.raises(anthropic.RateLimitError) as caught:
        ask()
    assert caught.value.body["error"]["code"] == "rate_limited"  # type: ignore[index]


def test_a_key_lists_only_the_models_it_may_use(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gateway = start(
        make_gateway, tmp_path, aliases_with(key_entry("a", models='[smart, "mock:*"]'))
    )
    client = keep(openai.OpenAI(base_url=gateway.base_url, api_key=KEYS["a"], max_retries=0))
    listed = {model.id for model in client.models.list()}
    assert "smart" in listed and "mock:echo" in listed and "echo" not in listed
    with pytest.raises(openai.PermissionDeniedError):
        client.models.retrieve("echo")
    everything = keep(openai.OpenAI(base_url=gateway.base_url, api_key=SERVICE, max_retries=0))
    assert "echo" in {model.id for model in everything.models.list()}
