"""Our Anthropic-Messages-to-OpenAI translation against any-llm's Messages bridge.

The other direction of ``test_translation_differential``: an Anthropic client (Claude
Code) on an OpenAI-compatible target. Same requests to both adapters, same answers from
the same fake OpenAI-compatible server; the same chat request on the wire and the same
client-visible Message (blocks, stop reason, usage) or event stream are required.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from runestone.providers.anyllm import AnyLLMMessagesAdapter
from runestone.providers.translated import MessagesToOpenAIAdapter
from tests.servers import FakeProvider, ServerThread, chunk, completion, send_stream
from tests.translation_harness import Harness, harness

MODEL = "gpt-test"


@pytest.fixture
def both(server_thread: ServerThread, fake: FakeProvider) -> Iterator[Harness]:
    yield from harness(
        server_thread,
        fake,
        provider="openai",
        env={"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": f"{fake.url}/v1"},
        model=MODEL,
        operation="messages",
        ours=lambda wire: MessagesToOpenAIAdapter(wire, max_body=64 * 1024 * 1024),
        oracle=AnyLLMMessagesAdapter,
    )


def blocks_of(content: list[dict[str, Any]]) -> list[Any]:
    found: list[Any] = []
    for block in content:
        kind = block["type"]
        if kind == "text":
            found.append(("text", block["text"]))
        elif kind == "thinking":
            found.append(("thinking", block["thinking"]))
        elif kind == "tool_use":
            found.append(("tool_use", block["id"], block["name"], block["input"]))
    return found


def visible(answer: dict[str, Any] | str) -> Any:
    if isinstance(answer, str):
        return answer
    usage = answer["usage"]
    return {
        "type": answer["type"],
        "role": answer["role"],
        "model": answer["model"],
        "blocks": blocks_of(answer["content"]),
        "stop_reason": answer["stop_reason"],
        "usage": (
            usage["input_tokens"],
            usage["output_tokens"],
            usage.get("cache_read_input_tokens"),
        ),
    }


def assembled(raw: bytes | str) -> Any:
    """What the Anthropic SDK assembles from an event stream."""
    if isinstance(raw, str):
        return raw
    events = []
    for event in raw.split(b"\n\n"):
        lines = dict(line.split(b": ", 1) for line in event.split(b"\n") if b": " in line)
        if b"data" in lines:
            events.append((lines[b"event"].decode(), orjson.loads(lines[b"data"])))
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    blocks: dict[int, dict[str, Any]] = {}
    stopped: list[int] = []
    stop_reason, usage = None, None
    for kind, data in events:
        if kind == "content_block_start":
            assert data["index"] not in blocks
            blocks[data["index"]] = {**data["content_block"], "partial": ""}
        elif kind == "content_block_delta":
            block, delta = blocks[data["index"]], data["delta"]
            assert data["index"] not in stopped, "a delta after its block's stop"
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "input_json_delta":
                block["partial"] += delta["partial_json"]
        elif kind == "content_block_stop":
            stopped.append(data["index"])
        elif kind == "message_delta":
            stop_reason = data["delta"]["stop_reason"]
            usage = (data["usage"]["input_tokens"], data["usage"]["output_tokens"])
    assert sorted(stopped) == sorted(blocks), "every block stopped"
    for block in blocks.values():
        if block["type"] == "tool_use":
            block["input"] = orjson.loads(block["partial"] or "{}")
    return {
        "blocks": blocks_of([blocks[i] for i in sorted(blocks)]),
        "stop_reason": stop_reason,
        "usage": usage,
    }


def answering(
    answer: dict[str, Any] | None = None, pieces: list[bytes] | None = None, coalesced: bool = False
) -> Any:
    async def behaviour(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        if body.get("stream"):
            assert pieces is not None
            return await send_stream(request, [b"".join(pieces)] if coalesced else pieces)
        return web.json_response(answer)

    return behaviour


HI = [{"role": "user", "content": "hi"}]
PARIS, ROME = {"city": "Paris"}, {"city": "Rome"}
PIXEL = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
REQUESTS: dict[str, dict[str, Any]] = {
    "plain": {"max_tokens": 50, "messages": HI},
    "system blocks, stops, sampling": {
        "max_tokens": 50,
        "system": [{"type": "text", "text": "Be brief. "}, {"type": "text", "text": "Be kind."}],
        "messages": HI,
        "stop_sequences": ["END"],
        "temperature": 0.3,
        "top_p": 0.8,
    },
    "tool turns": {
        "max_tokens": 50,
        "tools": [WEATHER],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": "weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool_use",
                        "id": "t1",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                    {
                        "type": "tool_use",
                        "id": "t2",
                        "name": "get_weather",
                        "input": {"city": "Rome"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "t2",
                        "is_error": True,
                        "content": [{"type": "text", "text": "timeout"}],
                    },
                    {"type": "text", "text": "and tomorrow?"},
                ],
            },
        ],
    },
    "images": {
        "max_tokens": 50,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what are these?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PIXEL},
                    },
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/c.png"},
                    },
                ],
            }
        ],
    },
    "named tool": {
        "max_tokens": 50,
        "tools": [WEATHER],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "messages": HI,
    },
    "thinking budget": {
        "max_tokens": 4000,
        "thinking": {"type": "enabled", "budget_tokens": 2000},
        "messages": HI,
    },
    "thinking off": {"max_tokens": 50, "thinking": {"type": "disabled"}, "messages": HI},
    "effort": {"max_tokens": 50, "output_config": {"effort": "high"}, "messages": HI},
}


@pytest.mark.parametrize("name", list(REQUESTS))
def test_the_same_request_goes_upstream(both: Harness, name: str) -> None:
    both.fake.on(MODEL, answering(completion(MODEL)))
    body = REQUESTS[name]
    assert visible(both.complete("ours", body)) == visible(both.complete("oracle", body))
    assert both.fake.seen[-2].body == both.fake.seen[-1].body


def answer(message: dict[str, Any], finish: str = "stop", **usage: Any) -> dict[str, Any]:
    made = completion(MODEL)
    made["choices"][0]["message"] = {"role": "assistant", **message}
    made["choices"][0]["finish_reason"] = finish
    made["usage"].update(usage)
    return made


CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
CALL2 = {
    "id": "call_2",
    "type": "function",
    "function": {"name": "get_time", "arguments": '{"zone": "CET"}'},
}
ANSWERS: dict[str, dict[str, Any]] = {
    "text": answer({"content": "Hello."}),
    "tool call": answer({"content": None, "tool_calls": [CALL]}, "tool_calls"),
    "text and parallel tool calls": answer(
        {"content": "Looking.", "tool_calls": [CALL, CALL2]}, "tool_calls"
    ),
    "cut at length": answer({"content": "Hel"}, "length"),
    "filtered": answer({"content": ""}, "content_filter"),
    "refusal": answer({"content": None, "refusal": "I can't help with that."}),
    "cached prompt": answer({"content": "Hi."}, prompt_tokens_details={"cached_tokens": 3}),
    "empty": answer({"content": None}),
}


@pytest.mark.parametrize("name", list(ANSWERS))
def test_the_same_answer_comes_back(both: Harness, name: str) -> None:
    both.fake.on(MODEL, answering(ANSWERS[name]))
    body = REQUESTS["plain"]
    assert visible(both.complete("ours", body)) == visible(both.complete("oracle", body))


def usage_chunk(prompt: int = 5, completion_tokens: int = 3) -> bytes:
    tail = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        },
    }
    return b"data: " + orjson.dumps(tail) + b"\n\n"


def calls_delta(index: int, call: dict[str, Any], split: bool) -> list[bytes]:
    first = {
        "index": index,
        "id": call["id"],
        "type": "function",
        "function": {"name": call["function"]["name"], "arguments": ""},
    }
    arguments = call["function"]["arguments"]
    parts = [arguments[:5], arguments[5:]] if split else [arguments]
    return [chunk(MODEL, {"tool_calls": [first]})] + [
        chunk(MODEL, {"tool_calls": [{"index": index, "function": {"arguments": part}}]})
        for part in parts
    ]


STREAMS: dict[str, list[bytes]] = {
    "text": [
        chunk(MODEL, {"role": "assistant", "content": ""}),
        chunk(MODEL, {"content": "Hello"}),
        chunk(MODEL, {"content": " there"}),
        chunk(MODEL, {}, "stop"),
        usage_chunk(),
        b"data: [DONE]\n\n",
    ],
    "tool call": [
        chunk(MODEL, {"role": "assistant", "content": None}),
        *calls_delta(0, CALL, True),
        chunk(MODEL, {}, "tool_calls"),
        usage_chunk(),
        b"data: [DONE]\n\n",
    ],
    "text, parallel calls, text while they run": [
        chunk(MODEL, {"role": "assistant", "content": "Let me see."}),
        *calls_delta(0, CALL, True),
        *calls_delta(1, CALL2, False),
        chunk(MODEL, {"content": "(two calls)"}),
        chunk(MODEL, {}, "tool_calls"),
        usage_chunk(9, 20),
        b"data: [DONE]\n\n",
    ],
    "cut at length": [
        chunk(MODEL, {"role": "assistant", "content": "Hel"}),
        chunk(MODEL, {}, "length"),
        usage_chunk(),
        b"data: [DONE]\n\n",
    ],
}


@pytest.mark.parametrize("coalesced", [False, True], ids=["spaced", "coalesced"])
@pytest.mark.parametrize("name", list(STREAMS))
def test_the_same_stream_comes_back(both: Harness, name: str, coalesced: bool) -> None:
    both.fake.on(MODEL, answering(pieces=STREAMS[name], coalesced=coalesced))
    body = REQUESTS["plain"]
    ours, oracle = assembled(both.stream("ours", body)), assembled(both.stream("oracle", body))
    assert ours == oracle
    assert both.fake.seen[-2].body == both.fake.seen[-1].body  # stream_options included


def test_a_cut_stream_says_so(both: Harness) -> None:
    pieces = [chunk(MODEL, {"role": "assistant", "content": "Hel"})]  # no finish, no [DONE]
    both.fake.on(MODEL, answering(pieces=pieces))
    raw = both.stream("ours", REQUESTS["plain"])
    assert isinstance(raw, bytes) and b"message_start" in raw
    # Deliberate: no message_stop, so the client (and the gateway's scanner) see a cut
    # stream; any-llm closes it as if it were complete.
    assert b"message_stop" not in raw
    assert b"message_stop" in both.stream("oracle", REQUESTS["plain"])  # type: ignore[operator]


@pytest.mark.parametrize(
    ("status", "code"),
    [(429, "upstream_rate_limited"), (503, "upstream_overloaded"), (400, "upstream_bad_request")],
)
def test_the_same_upstream_errors(both: Harness, status: int, code: str) -> None:
    async def refuse(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({"error": {"message": "no", "type": "x"}}, status=status)

    both.fake.on(MODEL, refuse)
    body = REQUESTS["plain"]
    assert both.complete("ours", body) == both.complete("oracle", body) == code
