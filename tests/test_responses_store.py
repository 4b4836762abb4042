"""The Responses API's store through the gateway: previous_response_id and item_reference
on bridged targets (chat-only and Anthropic-format), reading and deleting a stored
response, a key's responses hidden from every other key, store: false, the bounds, and a
conversation carried from a native target to a bridged one."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from aiohttp import web

from runestone.access import StateError, digest
from runestone.conversations import Bounds, Stored
from runestone.conversations._redis import RedisResponses
from runestone.conversations._sqlite import SQLiteResponses
from tests.conftest import MakeGateway
from tests.redis_server import RedisServer
from tests.servers import (
    FakeProvider,
    Gateway,
    completion,
    error_response,
    keep,
    send_stream,
    stream_events,
)
from tests.test_responses import ALIASES, native, native_response

KEYS = f"""
keys:
  alice: {{hash: "sha256:{digest("sk-alice")}"}}
  bob: {{hash: "sha256:{digest("sk-bob")}"}}
"""


@pytest.fixture
def gateway(make_gateway: MakeGateway, fake: FakeProvider) -> Gateway:
    fake.on("gpt-4.1", native)
    fake.on("llama", remembering)
    aliases = ALIASES.replace("BASE", fake.url) + KEYS
    return make_gateway(
        aliases, env={"ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": fake.url}
    )


async def remembering(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """A chat model that answers with what it was told, turn by turn."""
    said = [str(m.get("content")) for m in body["messages"] if m["role"] == "user"]
    text = "You said: " + " | ".join(said)
    if body.get("stream"):
        return await send_stream(request, stream_events(body["model"], [text], usage=True))
    return web.json_response(completion(body["model"], text))


def sdk(gateway: Gateway, key: str = "sk-alice") -> openai.OpenAI:
    return keep(openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0))


@pytest.mark.parametrize("alias", ["chat", "claude"])
def test_previous_response_id_continues_a_bridged_conversation(
    gateway: Gateway, fake: FakeProvider, alias: str
) -> None:
    client = sdk(gateway)
    first = client.responses.create(model=alias, input="My name is Ada.")
    second = client.responses.create(
        model=alias, input="What is my name?", previous_response_id=first.id
    )
    assert second.output_text
    sent = fake.seen[-1].body
    if alias == "chat":
        roles = [m["role"] for m in sent["messages"]]
        assert roles == ["user", "assistant", "user"]
        assert sent["messages"][0]["content"] == "My name is Ada."
        assert sent["messages"][1]["content"] == first.output_text
        assert second.output_text == "You said: My name is Ada. | What is my name?"
    else:
        assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    # Streamed: the stored response is readable once its stream is complete.
    with client.responses.stream(
        model=alias, input="And again?", previous_response_id=second.id
    ) as stream:
        third = stream.get_final_response()
    fourth = client.responses.create(model=alias, input="Last.", previous_response_id=third.id)
    assert fourth.output_text
    if alias == "chat":
        assert len(fake.seen[-1].body["messages"]) == 7


def test_a_stored_response_is_read_listed_and_deleted_by_its_key_only(gateway: Gateway) -> None:
    alice, bob = sdk(gateway), sdk(gateway, "sk-bob")
    made = alice.responses.create(model="chat", input="Remember this.")
    assert alice.responses.retrieve(made.id).output_text == made.output_text
    items = alice.responses.input_items.list(made.id)
    assert [item.type for item in items.data] == ["message"]
    assert items.data[0].id.startswith("msg_")
    for attempt in (
        lambda: bob.responses.retrieve(made.id),
        lambda: bob.responses.input_items.list(made.id),
        lambda: bob.responses.delete(made.id),
        lambda: bob.responses.create(model="chat", input="x", previous_response_id=made.id),
    ):
        with pytest.raises((openai.NotFoundError, openai.BadRequestError)) as caught:
            attempt()
        assert made.output_text not in str(caught.value.body)
    with pytest.raises(openai.BadRequestError) as refused:
        bob.responses.create(model="chat", input="x", previous_response_id=made.id)
    assert refused.value.body["param"] == "previous_response_id"  # type: ignore[index]
    alice.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        alice.responses.retrieve(made.id)


def test_item_reference_is_expanded_from_the_store(gateway: Gateway, fake: FakeProvider) -> None:
    client = sdk(gateway)
    first = client.responses.create(model="chat", input="Say something.")
    (message,) = first.output
    second = client.responses.create(
        model="chat",
        input=[
            {"role": "user", "content": "Say something."},
            {"type": "item_reference", "id": message.id},
            {"role": "user", "content": "Again."},
        ],
    )
    assert second.output_text
    sent = fake.seen[-1].body["messages"]
    assert sent[1] == {"role": "assistant", "content": first.output_text}
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gateway, "sk-bob").responses.create(
            model="chat", input=[{"type": "item_reference", "id": message.id}]
        )
    assert message.id in caught.value.body["message"]  # type: ignore[index]


def test_store_false_keeps_nothing(gateway: Gateway) -> None:
    client = sdk(gateway)
    made = client.responses.create(model="chat", input="Forget this.", store=False)
    assert made.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)


def test_a_conversation_moves_from_a_native_target_to_a_bridged_one(
    gateway: Gateway, fake: FakeProvider
) -> None:
    client = sdk(gateway)
    first = client.responses.create(model="native", input="Hi")
    assert first.output_text == "Native hello."
    second = client.responses.create(model="chat", input="Go on.", previous_response_id=first.id)
    assert second.output_text == "You said: Hi | Go on."
    sent = fake.seen[-1].body["messages"]
    assert sent[1] == {"role": "assistant", "content": "Native hello."}
    # And back: the native target gets the whole conversation, without the gateway's ids.
    client.responses.create(model="native", input="More.", previous_response_id=second.id)
    native_sent = fake.seen[-1].body
    assert "previous_response_id" not in native_sent
    assert [item.get("role") for item in native_sent["input"]] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert all("id" not in item for item in native_sent["input"])


def test_without_a_key_the_service_token_owns_its_responses(make_gateway: MakeGateway) -> None:
    gateway = make_gateway(env={"RUNESTONE_SERVICE_TOKEN": "svc"})
    client = sdk(gateway, "svc")
    made = client.responses.create(model="mock:echo", input="kept")
    assert client.responses.retrieve(made.id).output_text == "kept"
    raw = httpx.delete(
        f"{gateway.base_url}/responses/{made.id}", headers={"authorization": "Bearer svc"}
    )
    assert raw.json() == {"id": made.id, "object": "response", "deleted": True}
    put = httpx.put(
        f"{gateway.base_url}/responses/{made.id}", headers={"authorization": "Bearer svc"}
    )
    assert put.status_code == 405


def _record(number: int, size: int = 10) -> Stored:
    output = [{"type": "message", "id": f"msg_{number}", "content": "x" * size}]
    return Stored(
        f"resp_{number}", "key:a", 1000.0 + number, [], {"id": f"resp_{number}", "output": output}
    )


@pytest.mark.asyncio
async def test_the_sqlite_store_keeps_to_its_bounds(tmp_path: Path) -> None:
    store = SQLiteResponses(
        tmp_path / "r.sqlite3", bounds=Bounds(max_responses=3, max_bytes=10_000, max_age=100)
    )
    try:
        for number in range(5):
            await store.put(_record(number), 1000.0 + number)
        assert await store.get("resp_0", "key:a", 1005) is None
        assert await store.get("resp_4", "key:a", 1005) is not None
        assert (await store.holding("msg_3", "key:a", 1005)) is not None
        assert await store.holding("msg_1", "key:a", 1005) is None
        await store.put(_record(5, size=6000), 1005)
        await store.put(_record(6, size=6000), 1006)  # over the bytes: 5 goes
        assert await store.get("resp_5", "key:a", 1006) is None
        assert await store.get("resp_6", "key:a", 1006) is not None
        assert await store.get("resp_6", "key:a", 1006 + 101) is None  # too old
    finally:
        await store.aclose()


@pytest.mark.asyncio
async def test_the_sqlite_store_writes_concurrent_puts_together(tmp_path: Path) -> None:
    store = SQLiteResponses(tmp_path / "r.sqlite3", bounds=Bounds(max_responses=40))
    try:
        await asyncio.gather(*(store.put(_record(n), 1000.0 + n) for n in range(50)))
        kept = [await store.get(f"resp_{n}", "key:a", 1050) for n in range(50)]
        assert [k is not None for k in kept] == [False] * 10 + [True] * 40
        store._db.close()  # a store that cannot be written: every put of the batch hears it
        results = await asyncio.gather(
            *(store.put(_record(n), 1100.0) for n in range(60, 63)), return_exceptions=True
        )
        assert all(isinstance(r, StateError) for r in results)
    finally:
        store._thread.shutdown(wait=False)


def test_a_stored_response_survives_a_restart(make_gateway: MakeGateway, tmp_path: Path) -> None:
    state = tmp_path / "kept" / "state.sqlite3"
    first = make_gateway(state_path=state)
    made = sdk(first, "x").responses.create(model="mock:echo", input="durable")
    second = make_gateway(state_path=state)
    assert sdk(second, "x").responses.retrieve(made.id).output_text == "durable"
    assert (
        orjson.loads(
            httpx.get(f"{second.base_url}/responses/{made.id}/input_items?order=asc").content
        )["data"][0]["content"][0]["text"]
        == "durable"
    )
    assert time.time() > 0


# --- two replicas sharing Redis ---------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_the_next_turn_finds_the_response_on_the_other_replica(
    make_gateway: MakeGateway, fake: FakeProvider, redis_server: RedisServer, stream: bool
) -> None:
    fake.on("llama", remembering)
    aliases = ALIASES.replace("BASE", fake.url) + KEYS
    shared = {"redis_url": redis_server.url, "redis_prefix": f"r{time.monotonic_ns()}"}
    one, two = make_gateway(aliases, **shared), make_gateway(aliases, **shared)
    for turn in range(3):
        first_replica, second_replica = (one, two) if turn % 2 == 0 else (two, one)
        client = sdk(first_replica)
        if stream:
            with client.responses.stream(model="chat", input=f"Turn {turn}.") as events:
                made = events.get_final_response()
        else:
            made = client.responses.create(model="chat", input=f"Turn {turn}.")
        # At once, on the other replica: no wait for the store to catch up.
        follow = sdk(second_replica).responses.create(
            model="chat", input="And?", previous_response_id=made.id
        )
        assert follow.output_text == f"You said: Turn {turn}. | And?"
    with pytest.raises(openai.NotFoundError):
        sdk(two, "sk-bob").responses.retrieve(made.id)


@pytest.mark.asyncio
async def test_the_redis_store_keeps_to_its_bounds(redis_server: RedisServer) -> None:
    store = RedisResponses(
        redis_server.url,
        prefix=f"b{time.monotonic_ns()}",
        bounds=Bounds(max_responses=3, max_bytes=10_000, max_age=100),
    )
    try:
        for number in range(5):
            await store.put(_record(number), 1000.0 + number)
        assert await store.get("resp_0", "key:a", 1005) is None
        assert await store.get("resp_4", "key:a", 1005) is not None
        assert await store.get("resp_4", "key:b", 1005) is None
        assert (await store.holding("msg_3", "key:a", 1005)) is not None
        assert (await store.holding("msg_3", "key:b", 1005)) is None
        await store.put(_record(5, size=6000), 1005)
        await store.put(_record(6, size=6000), 1006)  # over the bytes: 5 goes
        assert await store.get("resp_5", "key:a", 1006) is None
        assert await store.get("resp_6", "key:a", 1006) is not None
        assert not await store.delete("resp_6", "key:b")
        assert await store.delete("resp_6", "key:a")
        assert await store.get("resp_6", "key:a", 1006) is None
    finally:
        await store.aclose()


# --- failover and reasoning ----------------------------------------------------------------


async def thinking_native(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """A native target whose answers carry reasoning: one encrypted, one only by id."""
    answer = native_response(body["model"])
    answer["id"] = f"resp_{time.monotonic_ns()}"
    answer["output"] = [
        {"type": "reasoning", "id": "rs_sealed", "summary": [], "encrypted_content": "gAAA"},
        {"type": "reasoning", "id": "rs_by_id", "summary": []},
        *answer["output"],
    ]
    return web.json_response(answer)


def test_a_failover_from_a_native_target_to_a_bridged_one_keeps_the_conversation(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    fake.on("llama", remembering)
    fake.on("thinking", thinking_native)
    fake.on("down", error_response(503, {"error": {"message": "overloaded"}}))
    aliases = ALIASES.replace("BASE", fake.url) + (
        "  thinking: openai:thinking\n  fallover: {targets: [openai:down, chatonly:llama]}\n"
    )
    gateway = make_gateway(aliases)
    client = sdk(gateway, "x")
    first = client.responses.create(model="thinking", input="Hi")
    # Back to OpenAI: its encrypted reasoning goes with the conversation, the other not.
    client.responses.create(model="thinking", input="More.", previous_response_id=first.id)
    resent = fake.seen[-1].body["input"]
    assert [item.get("id") for item in resent if item.get("type") == "reasoning"] == ["rs_sealed"]
    second = client.responses.create(
        model="fallover", input="Go on.", previous_response_id=first.id
    )
    assert second.output_text == "You said: Hi | Go on."
    native_try, bridged = fake.seen[-2:]
    assert native_try.body["model"] == "down" and "previous_response_id" not in native_try.body
    assert len(native_try.body["input"]) == 4  # the user's, its reasoning, its answer, ours
    assert "gAAA" not in bridged.raw.decode()  # reasoning is for its own provider only
