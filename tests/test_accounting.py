"""Exact accounting: what no client or upstream can slip past a key's limits and budgets.

Each test reproduces one finding of the exact-accounting issue through the real app:
a real gateway on loopback against the fake provider, its counters in a real SQLite file
or a real ``redis-server`` (the ``store`` fixture runs a test on both).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from tests.conftest import MakeGateway
from tests.redis_server import RedisServer
from tests.servers import (
    FakeProvider,
    Gateway,
    ServerThread,
    completion,
    send_stream,
    stream_events,
)
from tests.test_access import HI, KEYS, SERVICE, code, key_entry, limit, usage

# A dollar per thousand output tokens, a hundredth of that per input token.
PRICES = """
prices:
  "openai:gpt-4": {input: 10, output: 1000}
  "local:gpt-4": {input: 10, output: 1000}
  "anthropic:claude": {input: 10, output: 1000}
"""


@pytest.fixture(params=["sqlite", "redis"])
def store_env(
    request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer
) -> dict[str, str]:
    """The environment of a gateway whose counters live in the store the test is run on."""
    if request.param == "sqlite":
        return {"RUNESTONE_STATE_PATH": str(tmp_path / "state.sqlite3")}
    return {"RUNESTONE_REDIS_URL": redis_server.url, "RUNESTONE_REDIS_PREFIX": tmp_path.name}


def aliases(keys: str, extra: str = "") -> str:
    return (
        "defaults: {retries: 0}\n"
        "aliases:\n  smart: openai:gpt-4\n  claude: anthropic:claude\n  echo: mock:echo\n"
        + PRICES
        + "keys:\n"
        + keys
        + extra
    )


def begin(make_gateway: MakeGateway, fake: FakeProvider, yaml: str, env: dict[str, str]) -> Gateway:
    full = {"ANTHROPIC_BASE_URL": fake.url, "ANTHROPIC_API_KEY": "sk-ant-test", **env}
    return make_gateway(yaml, env=full, service_token=SERVICE)


def post(gateway: Gateway, key: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/chat/completions",
        json={"model": "smart", "messages": HI, **body},
        headers={"authorization": f"Bearer {KEYS[key]}", **headers},
        timeout=10,
    )


def today(gateway: Gateway, key: str) -> list[dict[str, Any]]:
    """The key's spend rows for today, once every settlement has been written."""
    time.sleep(0.1)
    return list(usage(gateway, key)["spend"]["today"])


def held(gateway: Gateway, key: str) -> float:
    time.sleep(0.1)
    return float(limit(usage(gateway, key), key, "parallel")["held"])


def slow_stream(seconds: float) -> Any:
    """An OpenAI-compatible stream that holds its answer open for ``seconds``."""

    async def behaviour(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        events = stream_events(body["model"], ["Hello", " there"], usage)
        if not body.get("stream"):
            await asyncio.sleep(seconds)
            return web.json_response(completion(body["model"]))
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(events[0] + events[1])
        await asyncio.sleep(seconds)
        for event in events[2:]:
            await response.write(event)
        await response.write_eof()
        return response

    return behaviour


async def concurrent_streams(
    gateway: Gateway, key: str, count: int, request_id: str | None = None
) -> list[int]:
    """``count`` streams at once; the status each got (its first line's, for a 200)."""
    headers = {"authorization": f"Bearer {KEYS[key]}"}
    if request_id is not None:
        headers["x-request-id"] = request_id
    body = {"model": "smart", "messages": HI, "stream": True, "max_tokens": 5}

    async def one(client: httpx.AsyncClient) -> int:
        async with client.stream(
            "POST", f"{gateway.base_url}/chat/completions", json=body, headers=headers
        ) as response:
            await response.aread()
            return response.status_code

    limits = httpx.Limits(max_connections=count + 5)
    async with httpx.AsyncClient(timeout=20, limits=limits) as client:
        return list(await asyncio.gather(*(one(client) for _ in range(count))))


# --- leases: nothing a client sends names store state ------------------------------------


def test_a_shared_request_id_does_not_share_a_parallel_slot(
    make_gateway: MakeGateway, fake: FakeProvider, store_env: dict[str, str]
) -> None:
    fake.on("gpt-4", slow_stream(0.6))
    gateway = begin(make_gateway, fake, aliases(key_entry("a", max_parallel="3")), store_env)
    statuses = asyncio.run(concurrent_streams(gateway, "a", 20, request_id="same-id"))
    assert sorted(statuses).count(200) == 3, statuses
    assert set(statuses) == {200, 429}
    assert held(gateway, "a") == 0  # every slot came back


def test_a_shared_request_id_cannot_overspend_a_budget(
    make_gateway: MakeGateway, fake: FakeProvider, store_env: dict[str, str]
) -> None:
    fake.on("gpt-4", slow_stream(0.4))
    # Each request reserves about $0.0083 (its body's bytes and max_tokens 7) and costs
    # $0.00705 (5 in, 7 out): a $0.05 budget admits at most six at once.
    budget = key_entry("a", budgets="[{usd: 0.05, per: day}]")
    gateway = begin(make_gateway, fake, aliases(budget), store_env)

    async def sixty() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=70)
        async with httpx.AsyncClient(timeout=20, limits=limits) as client:
            return list(
                await asyncio.gather(
                    *(
                        client.post(
                            f"{gateway.base_url}/chat/completions",
                            json={"model": "smart", "messages": HI, "max_tokens": 7},
                            headers={
                                "authorization": f"Bearer {KEYS['a']}",
                                "x-request-id": "one-id-for-all",
                            },
                        )
                        for _ in range(60)
                    )
                )
            )

    answers = asyncio.run(sixty())
    passed = sum(r.status_code == 200 for r in answers)
    assert 1 <= passed <= 7, [r.status_code for r in answers]
    spent = limit(usage(gateway, "a"), "a", "usd/day")
    assert spent["used"] <= 0.05
    assert spent["used"] == pytest.approx(passed * 0.00705)


def test_overlapping_requests_with_one_id_leak_no_slot(
    make_gateway: MakeGateway, fake: FakeProvider, store_env: dict[str, str]
) -> None:
    fake.on("gpt-4", slow_stream(0.3))
    gateway = begin(make_gateway, fake, aliases(key_entry("a", max_parallel="3")), store_env)
    assert asyncio.run(concurrent_streams(gateway, "a", 2, request_id="twice")) == [200, 200]
    assert held(gateway, "a") == 0
    assert asyncio.run(concurrent_streams(gateway, "a", 3)) == [200, 200, 200]


def test_a_victims_request_ids_cannot_lock_its_key_out(
    make_gateway: MakeGateway, fake: FakeProvider, store_env: dict[str, str]
) -> None:
    fake.on("gpt-4", slow_stream(0.4))
    fake.on("gpt-slow", slow_stream(1.0))
    keys = key_entry("a", max_parallel="50") + key_entry("b", max_parallel="3")
    yaml = aliases(keys).replace(
        "  echo: mock:echo\n", "  echo: mock:echo\n  slow: openai:gpt-slow\n"
    )
    gateway = begin(make_gateway, fake, yaml, store_env)
    # Gateway ids are a public prefix and a counter: the coming ones can be guessed.
    seen = post(gateway, "b", {"max_tokens": 5}).headers["x-request-id"]
    prefix, number = seen[:-12], int(seen[-12:], 16)
    coming = [f"{prefix}{number + n:012x}" for n in range(1, 6)]

    async def victim_and_attacker() -> list[int]:
        body = {"model": "slow", "messages": HI, "stream": True}
        headers = {"authorization": f"Bearer {KEYS['a']}"}
        async with httpx.AsyncClient(timeout=20, limits=httpx.Limits(max_connections=40)) as c:
            victim = asyncio.ensure_future(concurrent_streams(gateway, "b", 3))
            await asyncio.sleep(0.15)  # the victim's requests are in flight: replay their ids
            attacks = [
                c.post(
                    f"{gateway.base_url}/chat/completions",
                    json=body,
                    headers={**headers, "x-request-id": request_id},
                )
                for request_id in coming
            ]
            await asyncio.gather(*attacks)
            return await victim

    assert asyncio.run(victim_and_attacker()) == [200, 200, 200]
    assert held(gateway, "b") == 0 and held(gateway, "a") == 0
    assert asyncio.run(concurrent_streams(gateway, "b", 3)) == [200, 200, 200]


# --- usage on every path: streams are never booked at $0 ---------------------------------


def test_a_stream_to_a_provider_of_the_alias_file_books_its_usage(
    make_gateway: MakeGateway, fake: FakeProvider, store_env: dict[str, str]
) -> None:
    extra = f"providers:\n  local: {{base_url: '{fake.url}/v1'}}\n"
    yaml = aliases(key_entry("a", budgets="[{usd: 10, per: day}]"), extra).replace(
        "smart: openai:gpt-4", "smart: local:gpt-4"
    )
    gateway = begin(make_gateway, fake, yaml, store_env)
    answer = post(gateway, "a", {"stream": True, "max_tokens": 5})
    assert answer.status_code == 200 and '"usage"' not in answer.text  # not asked: hidden
    assert fake.seen[-1].body["stream_options"] == {"include_usage": True}
    (row,) = today(gateway, "a")
    assert (row["input_tokens"], row["output_tokens"]) == (5, 3)
    assert row["usd"] == pytest.approx(0.00305)


def test_a_provider_that_rejects_stream_options_can_opt_out(
    make_gateway: MakeGateway, fake: FakeProvider, store_env: dict[str, str]
) -> None:
    extra = f"providers:\n  local: {{base_url: '{fake.url}/v1', stream_usage: false}}\n"
    yaml = aliases(key_entry("a", budgets="[{usd: 10, per: day}]"), extra).replace(
        "smart: openai:gpt-4", "smart: local:gpt-4"
    )
    gateway = begin(make_gateway, fake, yaml, store_env)
    assert post(gateway, "a", {"stream": True, "max_tokens": 5}).status_code == 200
    assert "stream_options" not in fake.seen[-1].body
    (row,) = today(gateway, "a")  # no usage came: the reservation is booked, never $0
    assert row["estimated"] == 1 and row["usd"] > 0.005


def test_a_stream_without_usage_books_its_reservation(
    make_gateway: MakeGateway, fake: FakeProvider, store_env: dict[str, str]
) -> None:
    async def no_usage(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await send_stream(request, stream_events(body["model"], ["Hi", "!"], False))

    fake.on("gpt-4", no_usage)
    gateway = begin(
        make_gateway, fake, aliases(key_entry("a", budgets="[{usd: 10, per: day}]")), store_env
    )
    assert post(gateway, "a", {"stream": True, "max_tokens": 100}).status_code == 200
    (row,) = today(gateway, "a")
    # The worst case: every body byte an input token, 100 output tokens, at $1000/M.
    assert row["estimated"] == 1 and row["usd"] >= 0.1
    assert limit(usage(gateway, "a"), "a", "usd/day")["used"] == pytest.approx(row["usd"])


def test_a_client_that_leaves_before_the_usage_chunk_is_still_booked(
    make_gateway: MakeGateway, fake: FakeProvider, store_env: dict[str, str]
) -> None:
    async def usage_later(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        events = stream_events(body["model"], ["Hello", " there", "!"], True)
        return await send_stream(request, [*events[:-2], b": pause\n\n", *events[-2:]], delay=0.1)

    fake.on("gpt-4", usage_later)
    gateway = begin(
        make_gateway, fake, aliases(key_entry("a", budgets="[{usd: 10, per: day}]")), store_env
    )

    async def leave_after_the_answer() -> None:
        body = {"model": "smart", "messages": HI, "stream": True, "max_tokens": 5}
        headers = {"authorization": f"Bearer {KEYS['a']}"}
        async with (
            httpx.AsyncClient(timeout=10) as client,
            client.stream(
                "POST", f"{gateway.base_url}/chat/completions", json=body, headers=headers
            ) as response,
        ):
            async for line in response.aiter_lines():
                if '"finish_reason":"stop"' in line:
                    return  # the whole answer is in: the client leaves

    for _ in range(3):
        asyncio.run(leave_after_the_answer())
    time.sleep(0.6)
    (row,) = today(gateway, "a")
    assert (row["requests"], row["input_tokens"], row["output_tokens"]) == (3, 15, 9)
    assert row["estimated"] == 0


def test_a_translated_stream_books_anthropics_usage_unasked(
    make_gateway: MakeGateway, fake: FakeProvider, store_env: dict[str, str]
) -> None:
    gateway = begin(
        make_gateway, fake, aliases(key_entry("a", budgets="[{usd: 10, per: day}]")), store_env
    )
    answer = post(gateway, "a", {"model": "claude", "stream": True, "max_tokens": 5})
    assert answer.status_code == 200 and '"usage"' not in answer.text
    (row,) = today(gateway, "a")
    assert (row["input_tokens"], row["output_tokens"], row["estimated"]) == (12, 6, 0)


# --- reservations bound the cost -----------------------------------------------------------


def answering(usage: dict[str, int]) -> Any:
    async def behaviour(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({**completion(body["model"]), "usage": usage})

    return behaviour


def test_every_output_cap_counts_towards_the_reservation(
    make_gateway: MakeGateway, fake: FakeProvider, store_env: dict[str, str]
) -> None:
    fake.on("gpt-4", answering({"prompt_tokens": 10, "completion_tokens": 2000}))
    gateway = begin(
        make_gateway, fake, aliases(key_entry("a", budgets="[{usd: 1, per: day}]")), store_env
    )
    refused = post(gateway, "a", {"max_tokens": 1, "max_completion_tokens": 2000})
    assert refused.status_code == 429 and code(refused) == "budget_exceeded"
    assert len(fake.seen) == 0  # refused before anything went upstream


def test_n_choices_multiply_the_reserved_output(
    make_gateway: MakeGateway, fake: FakeProvider, store_env: dict[str, str]
) -> None:
    fake.on("gpt-4", answering({"prompt_tokens": 10, "completion_tokens": 1600}))
    gateway = begin(
        make_gateway, fake, aliases(key_entry("a", budgets="[{usd: 1, per: day}]")), store_env
    )
    refused = post(gateway, "a", {"max_tokens": 200, "n": 8})  # 1,600 tokens: $1.60
    assert refused.status_code == 429 and code(refused) == "budget_exceeded"
    assert post(gateway, "a", {"max_tokens": 200, "n": 2}).status_code == 200


def test_image_urls_are_reserved_by_the_providers_rules(
    make_gateway: MakeGateway, fake: FakeProvider, store_env: dict[str, str]
) -> None:
    # Ten images of the largest kind a provider bills (~1,600 tokens each and more):
    # 16,000 input tokens from an 877-byte request.
    fake.on("gpt-4", answering({"prompt_tokens": 16_000, "completion_tokens": 10}))
    prices = '  "openai:gpt-4": {input: 100, output: 1000}\n'
    yaml = aliases(key_entry("a", budgets="[{usd: 1, per: day}]")).replace(
        '  "openai:gpt-4": {input: 10, output: 1000}\n', prices
    )
    gateway = begin(make_gateway, fake, yaml, store_env)
    images = [
        {"type": "image_url", "image_url": {"url": f"https://x.test/{n}.png"}} for n in "0123456789"
    ]
    content = [{"type": "text", "text": "what is in these?"}, *images]
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 10}
    refused = post(gateway, "a", body)
    assert refused.status_code == 429 and code(refused) == "budget_exceeded"
    assert len(fake.seen) == 0


# --- usage is validated before it reaches a budget -------------------------------------------


def test_negative_usage_credits_nothing(
    make_gateway: MakeGateway, fake: FakeProvider, store_env: dict[str, str]
) -> None:
    fake.on("gpt-4", answering({"prompt_tokens": -2_000_000_000, "completion_tokens": -7}))
    gateway = begin(
        make_gateway, fake, aliases(key_entry("a", budgets="[{usd: 1, per: day}]")), store_env
    )
    assert post(gateway, "a", {"max_tokens": 7}).status_code == 200
    spent = limit(usage(gateway, "a"), "a", "usd/day")
    (row,) = today(gateway, "a")
    assert row["estimated"] == 1 and row["input_tokens"] >= 0 and row["output_tokens"] >= 0
    assert spent["used"] > 0.007  # the reservation, not a credit


def test_usage_too_large_for_a_store_loses_no_settlement(
    make_gateway: MakeGateway, fake: FakeProvider, store_env: dict[str, str]
) -> None:
    fake.on("gpt-4", answering({"prompt_tokens": 2**63, "completion_tokens": 2**64}))
    keys = key_entry("a", max_parallel="1", budgets="[{usd: 1, per: day}]")
    keys += key_entry("b", max_parallel="1")
    gateway = begin(make_gateway, fake, aliases(keys), store_env)

    async def together() -> list[int]:
        async with httpx.AsyncClient(timeout=10) as client:
            answers = await asyncio.gather(
                *(
                    client.post(
                        f"{gateway.base_url}/chat/completions",
                        json={"model": model, "messages": HI, "max_tokens": 7},
                        headers={"authorization": f"Bearer {KEYS[key]}"},
                    )
                    for key, model in (("a", "smart"), ("b", "echo"))
                )
            )
        return [answer.status_code for answer in answers]

    assert asyncio.run(together()) == [200, 200]
    assert held(gateway, "a") == 0 and held(gateway, "b") == 0
    assert post(gateway, "a", {"max_tokens": 7}).status_code == 200
    assert post(gateway, "b", {"model": "echo"}).status_code == 200
    console = httpx.get(
        f"{gateway.url}/console/api/overview", headers={"authorization": f"Bearer {SERVICE}"}
    )
    assert console.status_code == 200
    assert console.json()["keys"]["spend"]["today"]


def test_the_responses_pass_through_reads_the_answers_own_usage(
    make_gateway: MakeGateway, fake: FakeProvider, store_env: dict[str, str]
) -> None:
    async def responses(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        answer = {
            "id": "resp_1",
            "object": "response",
            "status": "completed",
            "model": body["model"],
            "usage": {"input_tokens": 9, "output_tokens": 4, "total_tokens": 13},
            "output": [
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "hi", "annotations": []}],
                }
            ],
            # Echoed from the request: a client's own data, after the real usage.
            "metadata": {"note": {"usage": {"input_tokens": 0, "output_tokens": 0}}},
        }
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    fake.on("gpt-4", responses)
    gateway = begin(
        make_gateway, fake, aliases(key_entry("a", budgets="[{usd: 10, per: day}]")), store_env
    )
    answer = httpx.post(
        f"{gateway.base_url}/responses",
        json={"model": "smart", "input": "hi", "max_output_tokens": 20},
        headers={"authorization": f"Bearer {KEYS['a']}"},
    )
    assert answer.status_code == 200, answer.text
    (row,) = today(gateway, "a")
    assert (row["input_tokens"], row["output_tokens"], row["estimated"]) == (9, 4, 0)


# --- one request, one alias table --------------------------------------------------------


def test_a_request_keeps_the_alias_table_it_started_with(
    make_gateway: MakeGateway, fake: FakeProvider, server_thread: ServerThread
) -> None:
    gateway = make_gateway("aliases:\n  smart: openai:gpt-4\n", service_token=SERVICE)
    path = gateway.app.aliases.path

    async def reload() -> bool:
        return gateway.app.aliases.reload()

    def change_the_file() -> None:
        path.write_text("aliases:\n  smart: openai:gpt-new\n")
        assert server_thread.run(reload())

    async def slow_body() -> AsyncIterator[bytes]:
        yield b'{"model": "smart", '
        await asyncio.sleep(0.2)  # the request has started: the alias file changes
        await asyncio.to_thread(change_the_file)
        yield b'"messages": [{"role": "user", "content": "hi"}]}'

    async def request() -> httpx.Response:
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.post(
                f"{gateway.base_url}/chat/completions",
                content=slow_body(),
                headers={"authorization": f"Bearer {SERVICE}", "content-type": "application/json"},
            )

    answer = asyncio.run(request())
    assert answer.status_code == 200
    assert answer.headers["x-runestone-target"] == "openai:gpt-4"
    assert fake.seen[-1].body["model"] == "gpt-4"
    after = post(gateway, "a", {}, authorization=f"Bearer {SERVICE}")
    assert after.headers["x-runestone-target"] == "openai:gpt-new"


# --- a lease comes back on every exit path ------------------------------------------------


class _Broken:
    """An adapter with a bug: the gateway's own fault, never an upstream's."""

    async def complete(self, call: Any) -> Any:
        raise TypeError("a bug in an adapter")

    async def open_stream(self, call: Any) -> Any:
        raise TypeError("a bug in an adapter")


@pytest.fixture
def broken_mock() -> Iterator[None]:
    from runestone.providers import _registry as provider_registry
    from runestone.providers import register_adapter

    pair = ("chat", "mock")
    original = provider_registry._ADAPTERS[pair]
    register_adapter("chat", "mock", lambda context: _Broken())
    yield
    provider_registry._ADAPTERS[pair] = original


async def _leave_after(gateway: Gateway, body: dict[str, Any], seconds: float) -> None:
    """A client that sends ``body`` and disconnects after ``seconds``, whatever came."""
    headers = {"authorization": f"Bearer {KEYS['a']}"}
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=seconds)) as client:
        try:
            async with client.stream(
                "POST", f"{gateway.base_url}/chat/completions", json=body, headers=headers
            ) as response:
                async for _ in response.aiter_bytes():
                    pass
        except httpx.ReadTimeout:
            pass


async def _half_a_body(gateway: Gateway) -> None:
    """A client that leaves in the middle of sending its body."""
    _, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"authorization: Bearer " + KEYS["a"].encode() + b"\r\ncontent-length: 500\r\n\r\n{"
    )
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()


EXITS = {
    "answered": lambda g: post(g, "a", {"max_tokens": 5}),
    "streamed": lambda g: post(g, "a", {"stream": True, "max_tokens": 5}),
    "upstream error": lambda g: post(g, "a", {"model": "openai:fails"}),
    "upstream error mid-stream": lambda g: post(g, "a", {"model": "openai:cut", "stream": True}),
    "gateway error": lambda g: post(g, "a", {"model": "echo"}),
    "gateway error, streamed": lambda g: post(g, "a", {"model": "echo", "stream": True}),
    "client gone mid-body": lambda g: asyncio.run(_half_a_body(g)),
    "client gone while connecting": lambda g: asyncio.run(
        _leave_after(g, {"model": "openai:slow", "messages": HI, "stream": True}, 0.1)
    ),
    "client gone mid-stream": lambda g: asyncio.run(
        _leave_after(g, {"model": "openai:pausing", "messages": HI, "stream": True}, 0.1)
    ),
    "client gone waiting for a whole answer": lambda g: asyncio.run(
        _leave_after(g, {"model": "openai:slow", "messages": HI}, 0.1)
    ),
}


@pytest.mark.usefixtures("broken_mock")
@pytest.mark.parametrize("exit_path", list(EXITS))
def test_the_lease_comes_back_on_every_exit_path(
    make_gateway: MakeGateway, fake: FakeProvider, tmp_path: Path, exit_path: str
) -> None:
    from tests.servers import error_response

    fake.on("fails", error_response(500, {"error": {"message": "boom", "type": "server_error"}}))
    fake.on("slow", slow_stream(0.6))

    async def cut(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await send_stream(request, stream_events("cut", ["a", "b"])[:2], then="drop")

    async def pausing(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await send_stream(request, stream_events("p", ["a", "b", "c"]), delay=0.2)

    fake.on("cut", cut)
    fake.on("pausing", pausing)
    state = {"RUNESTONE_STATE_PATH": str(tmp_path / "state.sqlite3")}
    keys = key_entry("a", max_parallel="1", budgets="[{usd: 10, per: day}]")
    gateway = begin(make_gateway, fake, aliases(keys), state)
    EXITS[exit_path](gateway)
    time.sleep(1.0)  # a stream read on for its usage ends, settlements are written
    report = usage(gateway, "a")
    assert limit(report, "a", "parallel")["held"] == 0
    assert limit(report, "a", "usd/day")["reserved"] == 0
    assert post(gateway, "a", {"max_tokens": 5}).status_code == 200
