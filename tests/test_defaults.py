"""Safe by default: the plain alias a user writes, every setting at its default, fails over
on silence, moves on from a slow first token, rescues a stream cut or stalled mid-answer,
and falls back on a context-length refusal.

The defaults scale with ``RUNESTONE_FAILOVER_SECONDS`` (30): these tests set it to 0.5,
so that a default that never hangs is seen in a second rather than a minute; one test
runs at the real default.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from tests.conftest import MakeGateway
from tests.servers import (
    FakeProvider,
    Gateway,
    completion,
    error_response,
    send_stream,
    stream_events,
)

FAILOVER = 0.5
HI = [{"role": "user", "content": "hi"}]
WORDS = ["Hello", " there", "!"]  # what the fallback (the fake's default) answers
PLAIN = "aliases:\n  chat: {targets: [openai:primary, openai:fallback]}\n"
LISTED = "aliases:\n  chat: [openai:primary, openai:fallback]\n"


async def silent(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    await asyncio.sleep(3600)  # accepts the request and never sends a byte
    raise AssertionError("unreachable")


def slow_first_token(seconds: float) -> Any:
    async def behaviour(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        if not body.get("stream"):
            await asyncio.sleep(seconds)
            return web.json_response(completion(body["model"]))
        events = stream_events(body["model"], WORDS)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(events[0])  # the role: not content yet
        await asyncio.sleep(seconds)
        for event in events[1:]:
            await response.write(event)
        await response.write_eof()
        return response

    return behaviour


def cut_after_hello(then: str) -> Any:
    async def behaviour(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        events = stream_events(body["model"], ["Hello"])[:2]  # the role, "Hello"; no end
        return await send_stream(request, events, then=then)

    return behaviour


CONTEXT = error_response(
    400,
    {
        "error": {
            "message": "This model's maximum context length is 8192 tokens.",
            "type": "invalid_request_error",
            "code": "context_length_exceeded",
        }
    },
)


def start(make_gateway: MakeGateway, yaml: str = PLAIN, failover: float = FAILOVER) -> Gateway:
    return make_gateway(yaml, env={"RUNESTONE_FAILOVER_SECONDS": str(failover)})


def ask(gateway: Gateway, *, stream: bool, model: str = "chat") -> tuple[httpx.Response, float]:
    started = time.monotonic()
    answer = httpx.post(
        f"{gateway.base_url}/chat/completions",
        json={"model": model, "messages": HI, "stream": stream},
        timeout=60,
    )
    return answer, time.monotonic() - started


def text_of(answer: httpx.Response) -> str:
    if not answer.headers["content-type"].startswith("text/event-stream"):
        return str(answer.json()["choices"][0]["message"]["content"])
    text = ""
    for line in answer.text.splitlines():
        if line.startswith("data: {"):
            for choice in orjson.loads(line[6:]).get("choices") or []:
                text += choice["delta"].get("content") or ""
    return text


@pytest.mark.parametrize("yaml", [PLAIN, LISTED], ids=["targets", "bare list"])
def test_a_silent_stream_fails_over(
    make_gateway: MakeGateway, fake: FakeProvider, yaml: str
) -> None:
    fake.on("primary", silent)
    answer, seconds = ask(start(make_gateway, yaml), stream=True)
    assert answer.status_code == 200 and answer.text.endswith("data: [DONE]\n\n")
    assert answer.headers["x-runestone-target"] == "openai:fallback"
    assert FAILOVER <= seconds < FAILOVER + 1.5


def test_a_slow_first_token_moves_on(make_gateway: MakeGateway, fake: FakeProvider) -> None:
    fake.on("primary", slow_first_token(FAILOVER * 6))
    answer, seconds = ask(start(make_gateway), stream=True)
    assert answer.headers["x-runestone-target"] == "openai:fallback"
    assert text_of(answer) == "Hello there!" and seconds < FAILOVER * 4


@pytest.mark.parametrize("then", ["drop", "hang"], ids=["cut", "stalled"])
def test_a_stream_cut_or_stalled_mid_answer_is_rescued(
    make_gateway: MakeGateway, fake: FakeProvider, then: str
) -> None:
    fake.on("primary", cut_after_hello(then))
    answer, seconds = ask(start(make_gateway), stream=True)
    assert answer.status_code == 200
    assert text_of(answer) == "Hello there!"  # the fallback's rest, spliced on
    assert answer.text.endswith("data: [DONE]\n\n") and '"error"' not in answer.text
    assert ": runestone continued this answer on openai:fallback" in answer.text
    assert seconds < FAILOVER * 4


def test_a_context_length_refusal_falls_back(make_gateway: MakeGateway, fake: FakeProvider) -> None:
    fake.on("primary", CONTEXT)
    for stream in (False, True):
        answer, _ = ask(start(make_gateway), stream=stream)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-runestone-target"] == "openai:fallback"
    assert [s.body["model"] for s in fake.seen].count("primary") == 2  # never back to it


def test_a_silent_answer_fails_over_when_not_streamed(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    fake.on("primary", silent)
    answer, seconds = ask(start(make_gateway), stream=False)
    assert answer.status_code == 200
    assert answer.headers["x-runestone-target"] == "openai:fallback"
    assert seconds < FAILOVER * 1.5 + 1.5


def test_the_last_target_gets_the_long_bound(make_gateway: MakeGateway, fake: FakeProvider) -> None:
    # Nothing left to fail over to: a slow answer is waited for (up to four times the
    # failover bound), not cut at the short one.
    fake.on("primary", error_response(500, {"error": {"message": "boom"}}))
    fake.on("fallback", slow_first_token(FAILOVER * 2))
    for stream in (False, True):
        answer, _ = ask(start(make_gateway), stream=stream)
        assert answer.status_code == 200, answer.text
        assert text_of(answer) in ("Hello there!", "Hello from the fake provider.")


def test_a_single_target_alias_never_waits_out_the_deadline_in_silence(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    fake.on("primary", silent)
    gateway = start(make_gateway, "aliases:\n  one: openai:primary\n")
    answer, seconds = ask(gateway, stream=True, model="one")
    assert answer.status_code == 504 and answer.json()["error"]["code"] == "upstream_timeout"
    assert FAILOVER * 4 <= seconds < FAILOVER * 4 + 1.5


def test_an_explicit_setting_wins_over_the_defaults(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    fake.on("primary", cut_after_hello("drop"))
    yaml = "aliases:\n  chat: {targets: [openai:primary, openai:fallback], on_stream_cut: error}\n"
    answer, _ = ask(start(make_gateway, yaml), stream=True)
    assert "upstream_stream_interrupted" in answer.text
    assert not answer.text.endswith("data: [DONE]\n\n")


def test_the_real_default_fails_a_silent_stream_over_within_a_minute(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    fake.on("primary", silent)
    gateway = make_gateway(PLAIN)
    answer, seconds = ask(gateway, stream=True)
    assert answer.headers["x-runestone-target"] == "openai:fallback"
    assert 30 <= seconds < 35
