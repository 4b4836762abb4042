"""The seams the architecture promises: mounts, the principal in scope, the error guard,
adapters registered per (operation, wire format), and a routed stream's states."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from runestone.http import Mount
from runestone.http.middleware import ErrorMiddleware
from runestone.http.routing import Dispatcher
from runestone.protocols import CHAT
from runestone.providers import AdapterContext, Call, Reply, register_adapter
from runestone.providers import _registry as provider_registry
from runestone.routing import IllegalTransition, StreamState
from tests.conftest import MakeGateway
from tests.servers import ServerThread

HELLO = {"model": "mock:echo", "messages": [{"role": "user", "content": "hi there"}]}


async def whoami(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A mounted sub-application that reports what the gateway told it."""
    principal = scope["auth"]
    body = orjson.dumps(
        {
            "principal": principal.name,
            "scopes": sorted(principal.scopes),
            "path": scope["path"],
            "root_path": scope["root_path"],
            "request_id": scope["runestone.request_id"],
        }
    )
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def test_a_mounted_app_sees_the_principal_and_its_prefix(make_gateway: MakeGateway) -> None:
    gateway = make_gateway(service_token="tok", mounts=[Mount("/tools", whoami)])
    seen = httpx.get(f"{gateway.url}/tools/api/state", headers={"authorization": "Bearer tok"})
    assert seen.status_code == 200
    body = seen.json()
    assert body["principal"] == "service"
    assert body["scopes"] == ["admin", "client", "metrics", "operator"]
    assert body["root_path"] == "/tools"
    assert body["path"] == "/tools/api/state"
    assert body["request_id"].startswith("req_")
    anonymous = httpx.get(f"{gateway.url}/tools").json()
    assert anonymous["principal"] == "anonymous"
    assert anonymous["scopes"] == []
    # A prefix is not a mount: /toolshed is someone else's path.
    assert httpx.get(f"{gateway.url}/toolshed").status_code == 404


async def _run(app: Any, raises: BaseException) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise raises

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/sub/x", "headers": []}
    await app(broken)(scope, receive, send)
    return sent


@pytest.mark.parametrize("raises", [RuntimeError("boom"), ValueError("late")])
def test_no_second_response_after_the_first_started(raises: BaseException) -> None:
    # A mounted (foreign) app is guarded: its start is noted, and nothing renders after.
    def stack(inner: Any) -> Any:
        return ErrorMiddleware(Dispatcher([Mount("/sub", inner)]))

    sent = asyncio.run(_run(stack, raises))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]


class _Shouting:
    """A chat adapter of one's own for the mock wire format."""

    async def complete(self, call: Call) -> Reply:
        return Reply(orjson.dumps({"choices": [{"message": {"content": "HI THERE"}}]}))

    async def open_stream(self, call: Call) -> Any:
        raise NotImplementedError


@pytest.fixture
def shouting_mock() -> Iterator[None]:
    pair = ("chat", "mock")
    original = provider_registry._ADAPTERS[pair]
    register_adapter("chat", "mock", lambda context: _Shouting())
    yield
    provider_registry._ADAPTERS[pair] = original


def test_a_registered_adapter_takes_over_a_pair(
    shouting_mock: None, make_gateway: MakeGateway
) -> None:
    gateway = make_gateway()
    answer = httpx.post(f"{gateway.base_url}/chat/completions", json=HELLO)
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == "HI THERE"


def test_adapter_context_shares_one_resource_per_key() -> None:
    async def check() -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            context = AdapterContext(session)
            first = context.shared("k", object)
            assert context.shared("k", object) is first
            await context.aclose()
            assert context.shared("k", object) is not first

    asyncio.run(check())


def test_a_routed_stream_moves_through_its_states(
    make_gateway: MakeGateway, server_thread: ServerThread
) -> None:
    gateway = make_gateway()

    async def scenario() -> list[str]:
        router = gateway.app.router
        assert router is not None
        body = {**HELLO, "stream": True}
        routed = await router.open_stream(body, "req_states", CHAT)
        states = [routed.state.value]
        with pytest.raises(IllegalTransition):
            await routed.connect()  # connecting twice is a bug
        events = [event async for event in routed.events()]
        assert events[-1].endswith(b"data: [DONE]\n\n")
        await routed.aclose()
        states.append(routed.state.value)
        with pytest.raises(IllegalTransition):
            routed.events()  # a finished stream cannot relay again
        assert routed.remaining == ()
        assert routed.attempts == 1
        return states

    assert server_thread.run(scenario()) == ["streaming", "done"]


def test_a_stream_cut_by_its_client_ends_failed(
    make_gateway: MakeGateway, server_thread: ServerThread
) -> None:
    gateway = make_gateway("aliases:\n  two: {targets: [mock:lorem, mock:echo]}\n")

    async def scenario() -> tuple[StreamState, list[str]]:
        router = gateway.app.router
        assert router is not None
        body = {"model": "two", "stream": True, "max_tokens": 50, "messages": HELLO["messages"]}
        routed = await router.open_stream(body, "req_cut", CHAT)
        remaining = [str(c.target) for c in routed.remaining]
        routed.close()  # the client went away mid-stream
        return routed.state, remaining

    state, remaining = server_thread.run(scenario())
    assert state is StreamState.FAILED
    assert remaining == ["mock:echo"]  # what a continuation could still try
