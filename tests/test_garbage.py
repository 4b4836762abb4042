"""Requests free what they made by reference counting alone: no garbage cycles.

An object graph caught in a reference cycle outlives its request until the cyclic garbage
collector finds it, and every collection in between walks it: a routed stream, its
scanner, the upstream response and their buffers, kept per request, cost a busy gateway
more CPU than the relay itself. The usual culprit is an exception kept with its traceback
(a cancelled task keeps its CancelledError, whose frames point back at the task's owner).
"""

from __future__ import annotations

import gc
import types
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.conftest import MakeGateway
from tests.servers import FakeProvider, Gateway, chunk, error_response, send_stream

HI = [{"role": "user", "content": "hi"}]
ALIASES = """
defaults: {retries: 0}
aliases:
  chat: openai:gpt-4
  claude: anthropic:claude-3-haiku
"""


@pytest.fixture
def collector_off() -> Iterator[None]:
    """No automatic collections while a test counts what only a collection would free."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def cyclic_garbage(send: Callable[[], None], times: int = 20) -> Counter[str]:
    """Runestone's objects (and frames of its code) that only the collector could free."""
    send()  # warm: pools, lazy imports, first-use caches
    gc.collect()
    for _ in range(times):
        send()
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    found: Counter[str] = Counter()
    for obj in gc.garbage:
        if isinstance(obj, types.FrameType):
            if "/runestone/" in obj.f_code.co_filename:
                found[f"frame {obj.f_code.co_name}"] += 1
        elif type(obj).__module__.startswith("runestone"):
            found[type(obj).__qualname__] += 1
    return found


@pytest.fixture
def gateway(make_gateway: MakeGateway, fake: FakeProvider) -> Gateway:
    env = {"ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": fake.url}
    return make_gateway(ALIASES, env=env)


def post(gateway: Gateway, path: str, body: dict[str, object]) -> Callable[[], None]:
    def send() -> None:
        with httpx.Client(timeout=10) as client:
            response = client.post(f"{gateway.base_url}{path}", json=body)
            assert response.status_code == 200, response.text
            if body.get("stream"):
                assert response.text.rstrip().endswith(("[DONE]", 'message_stop"}'))

    return send


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/chat/completions", {"model": "chat", "messages": HI}),
        ("/chat/completions", {"model": "chat", "messages": HI, "stream": True}),
        ("/chat/completions", {"model": "claude", "messages": HI}),
        ("/chat/completions", {"model": "claude", "messages": HI, "stream": True}),
        ("/messages", {"model": "chat", "max_tokens": 50, "messages": HI}),
        ("/messages", {"model": "chat", "max_tokens": 50, "messages": HI, "stream": True}),
    ],
    ids=[
        "chat",
        "chat-stream",
        "chat-on-anthropic",
        "chat-on-anthropic-stream",
        "messages-on-openai",
        "messages-on-openai-stream",
    ],
)
@pytest.mark.usefixtures("collector_off")
def test_answered_requests_leave_no_cycles(
    gateway: Gateway, path: str, body: dict[str, object]
) -> None:
    assert cyclic_garbage(post(gateway, path, body)) == Counter()


async def _drops(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    events = [chunk("m", {"role": "assistant", "content": ""}), chunk("m", {"content": "x"})]
    return await send_stream(request, events, then="drop")


@pytest.mark.parametrize(
    ("model", "stream", "status"),
    [
        ("openai:busy", False, 503),
        ("openai:busy", True, 503),
        ("nowhere:model", False, 404),
        ("openai:drops", True, 200),  # ended in-band
    ],
    ids=["upstream-fails", "upstream-fails-stream", "unknown-provider", "stream-cut-upstream"],
)
@pytest.mark.usefixtures("collector_off")
def test_failed_requests_leave_no_cycles(
    make_gateway: MakeGateway, fake: FakeProvider, model: str, stream: bool, status: int
) -> None:
    fake.on("busy", error_response(503, {"error": {"message": "busy"}}))
    fake.on("drops", _drops)
    gateway = make_gateway(ALIASES, breaker_failures=1_000_000, breaker_failure_rate=1.1)

    def send() -> None:
        body = {"model": model, "messages": HI, "stream": stream}
        response = httpx.post(f"{gateway.base_url}/chat/completions", json=body, timeout=10)
        assert response.status_code == status, response.text

    assert cyclic_garbage(send) == Counter()
