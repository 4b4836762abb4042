"""An upstream's output is checked before a translator relays it: a field of the wrong
type or an event out of order ends the stream as ``upstream_invalid_response`` (the
upstream's fault), never relayed as is to a client of the other format."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from runestone.errors import GatewayError
from runestone.providers.translated import TranslatedStream
from runestone.streams.sse import encode, split_events
from runestone.translate.chat_anthropic.chat_to_messages import ChatChunks, chat_completion
from runestone.translate.chat_anthropic.messages_events import MessageEvents
from runestone.translate.chat_anthropic.messages_to_chat import message
from tests.servers import anthropic_message, chunk, completion, sse_event
from tests.test_sse_codec import Pieces

START = chunk("m", {"role": "assistant", "content": ""})


def call(index: int, **fields: Any) -> dict[str, Any]:
    return {"tool_calls": [{"index": index, **fields}]}


def started(index: int, name: str = "get_weather") -> bytes:
    fields = {"id": f"call_{index}", "type": "function", "function": {"name": name}}
    return chunk("m", call(index, **fields))


def arguments(index: int, value: object) -> bytes:
    return chunk("m", call(index, function={"arguments": value}))


def to_anthropic(*events: bytes) -> bytes:
    """Chat-completion chunks of an OpenAI-compatible upstream, as an Anthropic client
    gets them (raises the error that would end the stream)."""
    translator = MessageEvents()

    def translate(kind: str | None, data: bytes) -> bytes:
        if data == b"[DONE]":
            return translator.finish()
        return translator.chunk(orjson.loads(data))

    stream = TranslatedStream(Pieces(b"".join(events), 1 << 20), translate, "openai")

    async def read() -> bytes:
        return b"".join([piece async for piece in stream.chunks()])

    return asyncio.run(read())


def to_chat(*events: bytes) -> bytes:
    """An Anthropic upstream's events, as a chat-completions client gets them."""
    translator = ChatChunks("claude", True)

    def translate(kind: str | None, data: bytes) -> bytes:
        payload = orjson.loads(data)
        return translator.event(kind or payload["type"], payload)

    stream = TranslatedStream(Pieces(b"".join(events), 1 << 20), translate, "anthropic")

    async def read() -> bytes:
        return b"".join([piece async for piece in stream.chunks()])

    return asyncio.run(read())


def refused(translate: Any, *events: bytes) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        translate(*events)
    assert caught.value.code == "upstream_invalid_response"
    return caught.value


# --- OpenAI-compatible upstream, Anthropic client ---------------------------------------------


def test_well_formed_tool_calls_pass_one_block_at_a_time() -> None:
    out = to_anthropic(
        START,
        started(0),
        arguments(0, '{"city": '),
        arguments(0, '"Paris"}'),
        started(1, "get_time"),
        arguments(1, "{}"),
        chunk("m", {}, "tool_calls"),
        b"data: [DONE]\n\n",
    )
    kinds = []
    for event in split_events(out):
        payload = orjson.loads(event.split(b"data: ", 1)[1])
        kinds.append((payload["type"], payload.get("index")))
    # Each block starts, takes its deltas and stops before the next one starts.
    assert kinds[1:9] == [
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("message_delta", None),
    ]


def test_arguments_that_are_not_a_string_are_refused() -> None:
    error = refused(to_anthropic, START, started(0), arguments(0, 5))
    assert "arguments" in error.message


def test_a_tool_call_without_a_name_is_refused() -> None:
    refused(to_anthropic, START, started(0, name=""))


def test_text_that_is_not_a_string_is_refused() -> None:
    refused(to_anthropic, START, chunk("m", {"content": 5}))


def test_arguments_for_a_call_already_ended_are_refused() -> None:
    # Interleaved calls: the first call's arguments after the second call started.
    refused(to_anthropic, START, started(0), started(1), arguments(0, "{}"))


def test_arguments_for_a_call_never_started_are_refused() -> None:
    refused(to_anthropic, START, arguments(3, "{}"))


def test_a_whole_answer_with_a_nameless_tool_call_is_refused() -> None:
    answer = completion("m")
    answer["choices"][0]["message"] = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "", "arguments": "{}"}}
        ],
    }
    with pytest.raises((ValueError, TypeError)):
        message(answer)


# --- Anthropic upstream, chat-completions client ----------------------------------------------


def anthropic_start() -> bytes:
    start = anthropic_message("claude", [])
    start["usage"] = {"input_tokens": 3, "output_tokens": 1}
    return sse_event("message_start", {"type": "message_start", "message": start})


def block_start(index: int, block: dict[str, Any]) -> bytes:
    return sse_event(
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": block},
    )


def block_delta(index: int, delta: dict[str, Any]) -> bytes:
    return sse_event(
        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    )


def block_stop(index: int) -> bytes:
    return sse_event("content_block_stop", {"type": "content_block_stop", "index": index})


TOOL = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}


def test_partial_json_that_is_not_a_string_is_refused() -> None:
    refused(
        to_chat,
        anthropic_start(),
        block_start(0, TOOL),
        block_delta(0, {"type": "input_json_delta", "partial_json": 5}),
    )


def test_an_anthropic_tool_without_a_name_is_refused() -> None:
    refused(to_chat, anthropic_start(), block_start(0, {**TOOL, "name": ""}))


def test_interleaved_anthropic_blocks_are_refused() -> None:
    text = {"type": "text", "text": ""}
    refused(
        to_chat,
        anthropic_start(),
        block_start(0, text),
        block_start(1, TOOL),
        block_delta(0, {"type": "text_delta", "text": "late"}),
    )


def test_an_anthropic_text_that_is_not_a_string_is_refused() -> None:
    refused(
        to_chat,
        anthropic_start(),
        block_start(0, {"type": "text", "text": ""}),
        block_delta(0, {"type": "text_delta", "text": ["x"]}),
    )


def test_a_whole_anthropic_answer_with_a_nameless_tool_is_refused() -> None:
    answer = anthropic_message("claude", [{**TOOL, "name": ""}], "tool_use")
    with pytest.raises((ValueError, TypeError)):
        chat_completion(answer)


def test_a_clean_anthropic_stream_still_passes() -> None:
    out = to_chat(
        anthropic_start(),
        block_start(0, {"type": "text", "text": ""}),
        block_delta(0, {"type": "text_delta", "text": "Hi"}),
        block_stop(0),
        block_start(1, TOOL),
        block_delta(1, {"type": "input_json_delta", "partial_json": '{"city": "Paris"}'}),
        block_stop(1),
        sse_event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use"},
                "usage": {"output_tokens": 5},
            },
        ),
        sse_event("message_stop", {"type": "message_stop"}),
    )
    assert out.endswith(b"data: [DONE]\n\n")
    assert encode(b"[DONE]") == b"data: [DONE]\n\n"
