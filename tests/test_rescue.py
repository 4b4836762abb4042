"""Rescue instead of report (the rescue issue): continuation of a cut stream, streams
complete without [DONE], context-window fallback, and no retry of a silent target."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anthropic
import httpx
import openai
import orjson
from aiohttp import web

from tests.conftest import MakeGateway
from tests.servers import (
    FakeProvider,
    Gateway,
    anthropic_stream,
    chunk,
    error_response,
    keep,
    send_stream,
    stream_events,
)

HI = [{"role": "user", "content": "Say hello and goodbye"}]
WHOLE = "Hello there and goodbye!"


def cut_after(words: list[str], then: str = "drop") -> Any:
    async def behaviour(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        events = stream_events(body["model"], words)[:-2]  # no finish, no [DONE]
        return await send_stream(request, events, delay=0.01, then=then)

    return behaviour


async def prefiller(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """Continues a final assistant message, as a prefill-capable server does."""
    last = body["messages"][-1]
    assert last["role"] == "assistant", body["messages"]
    rest = WHOLE[len(last["content"]) :]
    return await send_stream(request, stream_events(body["model"], [rest[:5], rest[5:]]))


def answering(pieces: list[str]) -> Any:
    async def behaviour(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        assert body["messages"][-1]["role"] == "user"  # the request, unchanged
        return await send_stream(request, stream_events(body["model"], pieces))

    return behaviour


RESCUE = """
defaults: {retries: 0, on_stream_cut: continue, idle_timeout: 0.5, timeout: 10}
aliases:
  prefilled: {targets: [openai:cut, {target: openai:prefiller, prefill: true}]}
  spliced: {targets: [openai:cut, openai:splicer]}
  stalled: {targets: [openai:stall, openai:splicer]}
  reporting: {targets: [openai:cut, openai:splicer], on_stream_cut: error}
"""


def stream_text(gateway: Gateway, model: str) -> tuple[str, list[Any]]:
    client = keep(openai.OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0))
    chunks = list(client.chat.completions.create(model=model, messages=HI, stream=True))  # type: ignore[arg-type]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def raw_stream(gateway: Gateway, model: str) -> bytes:
    body = {"model": model, "stream": True, "messages": HI}
    return httpx.post(f"{gateway.base_url}/chat/completions", json=body, timeout=30).content


def test_a_cut_stream_is_continued_by_prefill(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    fake.on("cut", cut_after(["Hello", " there "]))
    fake.on("prefiller", prefiller)
    gateway = make_gateway(RESCUE)
    text, chunks = stream_text(gateway, "prefilled")
    assert text == WHOLE
    assert len({c.id for c in chunks}) == 1  # one stream, one id
    roles = [c for c in chunks if c.choices and c.choices[0].delta.role]
    assert len(roles) == 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    raw = raw_stream(gateway, "prefilled")
    assert raw.count(b"data: [DONE]") == 1
    assert b": runestone continued this answer on openai:prefiller" in raw
    sent = [s for s in fake.seen if s.body["model"] == "prefiller"][-1]
    assert sent.body["messages"][-1] == {"role": "assistant", "content": "Hello there"}


def test_a_cut_stream_is_spliced_by_prefix(make_gateway: MakeGateway, fake: FakeProvider) -> None:
    fake.on("cut", cut_after(["Hello", " there"]))
    fake.on("splicer", answering(["Hel", "lo th", "ere and", " goodbye!"]))
    gateway = make_gateway(RESCUE)
    text, _ = stream_text(gateway, "spliced")
    assert text == WHOLE
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'runestone_stream_outcomes_total{outcome="rescued",route="chat"} 1.0' in metrics


def test_a_divergent_continuation_is_never_shown(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    fake.on("cut", cut_after(["Hello", " there"]))
    fake.on("splicer", answering(["Goodbye", " now"]))
    gateway = make_gateway(RESCUE)
    raw = raw_stream(gateway, "spliced")
    assert b"Goodbye" not in raw
    assert b"data: [DONE]" not in raw
    assert b'"code":"upstream_stream_interrupted"' in raw


def test_a_stalled_stream_is_continued(make_gateway: MakeGateway, fake: FakeProvider) -> None:
    fake.on("stall", cut_after(["Hello", " there"], then="hang"))
    fake.on("splicer", answering(["Hello there", " and goodbye!"]))
    gateway = make_gateway(RESCUE)
    started = time.monotonic()
    text, _ = stream_text(gateway, "stalled")
    assert text == WHOLE
    assert time.monotonic() - started < 3  # the idle timeout (0.5 s), then the rescue


def test_without_opting_in_a_cut_stream_still_reports(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    fake.on("cut", cut_after(["Hello", " there"]))
    gateway = make_gateway(RESCUE)
    raw = raw_stream(gateway, "reporting")
    assert b"data: [DONE]" not in raw
    assert b'"code":"upstream_stream_interrupted"' in raw
    assert not [s for s in fake.seen if s.body["model"] == "splicer"]


def test_a_tool_call_in_progress_is_not_continued(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    async def tool_then_drop(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f"}}
        events = [
            chunk("m", {"role": "assistant", "content": "Let me look"}),
            chunk("m", {"tool_calls": [call]}),
        ]
        return await send_stream(request, events, then="drop")

    fake.on("cut", tool_then_drop)
    fake.on("splicer", answering(["Let me look"]))
    gateway = make_gateway(RESCUE)
    raw = raw_stream(gateway, "spliced")
    assert b'"code":"upstream_stream_interrupted"' in raw
    assert not [s for s in fake.seen if s.body["model"] == "splicer"]


# --- the Messages API: the open text block is continued ----------------------------------------


def test_a_cut_messages_stream_is_continued(make_gateway: MakeGateway, fake: FakeProvider) -> None:
    async def cut(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        events = anthropic_stream(body["model"], ["Hello", " there"])[:-3]  # open block
        return await send_stream(request, events, delay=0.01, then="drop")

    async def good(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        last = body["messages"][-1]
        assert last == {"role": "assistant", "content": "Hello there"}
        return await send_stream(request, anthropic_stream(body["model"], [" and", " goodbye!"]))

    fake.on("claude-cut", cut)
    fake.on("claude-good", good)
    gateway = make_gateway(
        "defaults: {retries: 0, on_stream_cut: continue}\n"
        "aliases:\n  claude: {targets: [anthropic:claude-cut, anthropic:claude-good]}\n",
        env={"ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": fake.url},
    )
    client = keep(anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0))
    with client.messages.stream(model="claude", max_tokens=50, messages=HI) as stream:
        message = stream.get_final_message()
    assert message.content[0].text == WHOLE  # type: ignore[union-attr]
    assert len(message.content) == 1  # one text block, continued
    assert message.stop_reason == "end_turn"


# --- a complete stream without [DONE] ------------------------------------------------------------


def test_a_complete_stream_without_done_gets_one(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    async def no_done(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await send_stream(request, stream_events(body["model"], ["Hi", "!"])[:-1])

    async def no_finish(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await send_stream(request, stream_events(body["model"], ["Hi", "!"])[:-2])

    fake.on("no-done", no_done)
    fake.on("no-finish", no_finish)
    gateway = make_gateway()
    whole = raw_stream(gateway, "openai:no-done")
    assert whole.endswith(b"data: [DONE]\n\n")
    assert b'"error"' not in whole
    cut = raw_stream(gateway, "openai:no-finish")
    assert b"data: [DONE]" not in cut
    assert b'"code":"upstream_stream_interrupted"' in cut


# --- context-window fallback --------------------------------------------------------------------


CONTEXT = """
defaults: {retries: 0}
aliases:
  roomy: {targets: [openai:small, openai:other-small], context_fallback: [openai:big]}
  strict: {targets: [openai:filtering], context_fallback: [openai:big]}
"""
TOO_LONG = {
    "error": {"message": "maximum context length is 8192", "code": "context_length_exceeded"}
}


def test_a_prompt_too_long_goes_to_the_larger_context(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    fake.on("small", error_response(400, TOO_LONG))
    gateway = make_gateway(CONTEXT)
    for stream in (False, True):
        body = {"model": "roomy", "stream": stream, "messages": HI}
        response = httpx.post(f"{gateway.base_url}/chat/completions", json=body, timeout=10)
        assert response.status_code == 200
        assert response.headers["x-runestone-target"] == "openai:big"
    models = [s.body["model"] for s in fake.seen]
    assert models == ["small", "big", "small", "big"]  # never other-small, never back


def test_a_content_refusal_is_not_routed_around(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    refusal = {"error": {"message": "flagged", "code": "content_policy_violation"}}
    fake.on("filtering", error_response(400, refusal))
    gateway = make_gateway(CONTEXT)
    response = httpx.post(
        f"{gateway.base_url}/chat/completions", json={"model": "strict", "messages": HI}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "content_filtered"
    assert [s.body["model"] for s in fake.seen] == ["filtering"]


def test_context_fallback_is_validated() -> None:
    from runestone.aliases import AliasFileError, parse_alias_file

    bad = (
        b"aliases:\n  a: {targets: [openai:x], context_fallback: [nocolon], on_stream_cut: maybe}\n"
    )
    try:
        parse_alias_file(bad, "f")
    except AliasFileError as exc:
        text = str(exc)
    else:
        raise AssertionError("accepted")
    assert "context_fallback" in text
    assert "on_stream_cut must be error or continue" in text


# --- a silent target is not retried --------------------------------------------------------------


async def _silent(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    await asyncio.sleep(30)
    raise AssertionError("unreachable")


def test_a_silent_primary_is_left_after_one_first_token_timeout(
    make_gateway: MakeGateway, fake: FakeProvider
) -> None:
    fake.on("silent", _silent)
    gateway = make_gateway(
        "aliases:\n  quick: {targets: [openai:silent, openai:ok], retries: 2, "
        "first_token_timeout: 1, timeout: 20}\n"
    )
    started = time.monotonic()
    response = httpx.post(
        f"{gateway.base_url}/chat/completions",
        json={"model": "quick", "stream": True, "messages": HI},
        timeout=30,
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.content.endswith(b"data: [DONE]\n\n")
    assert 1.0 <= elapsed < 2.0  # not 3 s: the silent target was not retried twice
    assert [s.body["model"] for s in fake.seen] == ["silent", "ok"]
    assert orjson.loads(response.content.split(b"\n\n")[0][6:])["model"] == "ok"
