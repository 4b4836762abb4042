"""Our OpenAI-chat-to-Anthropic translation against any-llm's, as the oracle.

Both adapters are given the same request, against the same fake Anthropic server giving
the same answer (a message, or an event sequence written in one piece or event by
event); the test requires the same Anthropic request on the wire and the same
client-visible result: content, tool calls, finish reason, refusal, reasoning, usage,
errors. Where ours differs on purpose (error codes more precise than any-llm's), the
test says so and asserts both.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from runestone.providers.anyllm import AnyLLMChatAdapter
from runestone.providers.translated import ChatToAnthropicAdapter
from tests.servers import (
    FakeProvider,
    ServerThread,
    anthropic_message,
    anthropic_stream,
    send_stream,
    sse_event,
)
from tests.translation_harness import Harness, harness

MODEL = "claude-test"


@pytest.fixture
def both(server_thread: ServerThread, fake: FakeProvider) -> Iterator[Harness]:
    yield from harness(
        server_thread,
        fake,
        provider="anthropic",
        env={"ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": fake.url},
        model=MODEL,
        operation="chat",
        ours=lambda wire: ChatToAnthropicAdapter(wire, max_body=64 * 1024 * 1024),
        oracle=AnyLLMChatAdapter,
    )


def visible(answer: dict[str, Any] | str) -> Any:
    """What a client sees of a chat completion (ids and times are each side's own)."""
    if isinstance(answer, str):
        return answer
    choice = answer["choices"][0]
    message = choice["message"]
    calls = [
        (c["id"], c["type"], c["function"]["name"], orjson.loads(c["function"]["arguments"]))
        for c in message.get("tool_calls") or []
    ]
    usage = answer.get("usage") or {}
    return {
        "object": answer["object"],
        "model": answer["model"],
        "content": message.get("content"),
        "role": message["role"],
        "refusal": message.get("refusal"),
        "reasoning": message.get("reasoning"),
        "tool_calls": calls,
        "finish_reason": choice["finish_reason"],
        "usage": {k: usage.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
        "cached": (usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
    }


def assembled(raw: bytes | str) -> Any:
    """What a client's SDK assembles from a chunk stream."""
    if isinstance(raw, str):
        return raw
    datas = [
        line[6:]
        for event in raw.split(b"\n\n")
        for line in event.split(b"\n")
        if line.startswith(b"data: ")
    ]
    assert datas[-1] == b"[DONE]" and datas.count(b"[DONE]") == 1
    chunks = [orjson.loads(d) for d in datas[:-1]]
    assert len({c["id"] for c in chunks}) == 1, "one id for the whole stream"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content, reasoning, finish, usage, refusal = "", "", None, None, None
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        if chunk.get("usage"):
            usage = {k: chunk["usage"][k] for k in ("prompt_tokens", "completion_tokens")}
        for choice in chunk["choices"]:
            delta = choice.get("delta") or {}
            content += delta.get("content") or ""
            reasoning += delta.get("reasoning") or ""
            refusal = delta.get("refusal") or refusal
            for call in delta.get("tool_calls") or []:
                found = calls.setdefault(call["index"], {"arguments": ""})
                if call.get("id"):
                    found["id"] = call["id"]
                    found["name"] = call["function"]["name"]
                found["arguments"] += call["function"].get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    assert sorted(calls) == list(range(len(calls))), "tool calls numbered 0, 1, ..."
    return {
        "content": content,
        "reasoning": reasoning,
        "refusal": refusal,
        "finish_reason": finish,
        "usage": usage,
        "tool_calls": [
            (c["id"], c["name"], orjson.loads(c["arguments"] or "{}"))
            for _, c in sorted(calls.items())
        ],
    }


def answering(
    message: dict[str, Any] | None = None,
    events: list[bytes] | None = None,
    coalesced: bool = False,
    status: int = 200,
    error: dict[str, Any] | None = None,
) -> Any:
    async def behaviour(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        if status != 200:
            return web.json_response(error, status=status)
        if body.get("stream"):
            assert events is not None
            pieces = [b"".join(events)] if coalesced else events
            return await send_stream(request, pieces)
        return web.json_response(message)

    return behaviour


TEXT = [{"type": "text", "text": "Hello from Claude."}]
TOOL = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
TOOL2 = {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {"zone": "CET"}}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
PIXEL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def message(content: list[dict[str, Any]], stop: str = "end_turn", **usage: int) -> dict[str, Any]:
    made = anthropic_message(MODEL, content, stop)
    made["usage"] = {"input_tokens": 12, "output_tokens": 6, **usage}
    return made


REQUESTS: dict[str, dict[str, Any]] = {
    "plain": {"messages": [{"role": "user", "content": "hi"}]},
    "system, stop, sampling": {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "hi"},
        ],
        "stop": "END",
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 100,
    },
    "multi-turn tools": {
        "messages": [
            {"role": "user", "content": "weather and time?"},
            {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "toolu_2",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": '{"zone": "CET"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": "noon"},
        ],
        "tools": [WEATHER],
        "tool_choice": "required",
        "parallel_tool_calls": False,
    },
    "images": {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": PIXEL}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                ],
            }
        ],
    },
    "named tool": {
        "messages": [{"role": "user", "content": "weather?"}],
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    },
    "no tools please": {
        "messages": [{"role": "user", "content": "weather?"}],
        "tools": [WEATHER],
        "tool_choice": "none",
    },
}


@pytest.mark.parametrize("name", list(REQUESTS))
def test_the_same_request_goes_upstream(both: Harness, name: str) -> None:
    both.fake.on(MODEL, answering(message(TEXT)))
    body = REQUESTS[name]
    assert visible(both.complete("ours", body)) == visible(both.complete("oracle", body))
    ours_sent = both.fake.seen[-2].body
    oracle_sent = both.fake.seen[-1].body
    assert ours_sent == oracle_sent


ANSWERS: dict[str, dict[str, Any]] = {
    "text": message(TEXT),
    "text and a tool call": message([*TEXT, TOOL], "tool_use"),
    "parallel tool calls": message([TOOL, TOOL2], "tool_use"),
    "cut at max_tokens": message(TEXT, "max_tokens"),
    "stop sequence": message(TEXT, "stop_sequence"),
    "refusal": message([], "refusal"),
    "reasoning": message(
        [{"type": "thinking", "thinking": "Let me think.", "signature": "sig"}, *TEXT]
    ),
    "cache usage": message(TEXT, cache_read_input_tokens=100, cache_creation_input_tokens=20),
}


@pytest.mark.parametrize("name", list(ANSWERS))
def test_the_same_answer_comes_back(both: Harness, name: str) -> None:
    both.fake.on(MODEL, answering(ANSWERS[name]))
    body = REQUESTS["plain"]
    ours, oracle = both.complete("ours", body), both.complete("oracle", body)
    assert visible(ours) == visible(oracle)


def tool_events(tools: list[dict[str, Any]], texts: list[str]) -> list[bytes]:
    """A stream with text and then each tool call, as Anthropic sends them."""
    events = anthropic_stream(MODEL, texts, tools[0] if tools else None)
    if len(tools) > 1:  # a second tool_use block, before message_delta
        second = tools[1]
        arguments = orjson.dumps(second["input"]).decode()
        extra = [
            sse_event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 2,
                    "content_block": {**second, "input": {}},
                },
            ),
            sse_event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 2,
                    "delta": {"type": "input_json_delta", "partial_json": arguments},
                },
            ),
            sse_event("content_block_stop", {"type": "content_block_stop", "index": 2}),
        ]
        events[-2:-2] = extra
    return events


STREAMS: dict[str, list[bytes]] = {
    "text": anthropic_stream(MODEL, ["Hello", " there", "!"]),
    "tool call": tool_events([TOOL], ["Let me check."]),
    "parallel tool calls": tool_events([TOOL, TOOL2], []),
}


@pytest.mark.parametrize("coalesced", [False, True], ids=["spaced", "coalesced"])
@pytest.mark.parametrize("usage", [False, True], ids=["no-usage", "include-usage"])
@pytest.mark.parametrize("name", list(STREAMS))
def test_the_same_stream_comes_back(both: Harness, name: str, usage: bool, coalesced: bool) -> None:
    both.fake.on(MODEL, answering(events=STREAMS[name], coalesced=coalesced))
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    if usage:
        body["stream_options"] = {"include_usage": True}
    ours, oracle = assembled(both.stream("ours", body)), assembled(both.stream("oracle", body))
    assert ours == oracle
    assert (ours["usage"] is not None) == usage


def test_an_error_event_mid_stream(both: Harness) -> None:
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    events = [*anthropic_stream(MODEL, ["Hel"])[:4], sse_event("error", overloaded)]
    both.fake.on(MODEL, answering(events=events))
    body = {"messages": [{"role": "user", "content": "hi"}]}
    # Deliberate: the event says overloaded, and so do we (retryable, as the same event
    # relayed to an Anthropic client says); any-llm reports a generic server error.
    assert both.stream("ours", body) == "upstream_overloaded"
    assert both.stream("oracle", body) == "upstream_server_error"


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        (529, "overloaded_error", "upstream_overloaded"),
        (429, "rate_limit_error", "upstream_rate_limited"),
        (400, "invalid_request_error", "upstream_bad_request"),
        (401, "authentication_error", "upstream_auth_failed"),
    ],
)
def test_the_same_upstream_errors(both: Harness, status: int, kind: str, code: str) -> None:
    error = {"type": "error", "error": {"type": kind, "message": "no"}}
    both.fake.on(MODEL, answering(status=status, error=error))
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert both.complete("ours", body) == both.complete("oracle", body) == code
    assert both.stream("ours", body) == code
    if status != 400:
        assert both.stream("oracle", body) == code
    else:  # deliberate: any-llm reports a refused stream's 400 as a server error
        assert both.stream("oracle", body) == "upstream_server_error"
