"""The mock provider speaking Anthropic's Messages API: the same answers, its shapes.

So that the Anthropic SDKs and Claude Code can try the gateway with no key at all.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import orjson

from runestone.errors import GatewayError
from runestone.providers._mock_answers import MockAnswer, answer
from runestone.providers.adapter import Call, Reply
from runestone.streams.sse import encode


def _content(found: MockAnswer) -> list[dict[str, object]]:
    blocks: list[dict[str, object]] = []
    if found.pieces and found.text:
        blocks.append({"type": "text", "text": found.text})
    if found.tool_call is not None:
        blocks.append(
            {
                "type": "tool_use",
                "id": f"toolu_mock_{os.urandom(6).hex()}",
                "name": found.tool_call.name,
                "input": found.tool_call.arguments,
            }
        )
    return blocks


def _stop_reason(found: MockAnswer) -> str:
    return "tool_use" if found.tool_call is not None else "end_turn"


def _message(call: Call, found: MockAnswer, content: list[dict[str, object]]) -> dict[str, object]:
    return {
        "id": f"msg_mock_{os.urandom(6).hex()}",
        "type": "message",
        "role": "assistant",
        "model": f"mock:{call.model}",
        "content": content,
        "stop_reason": _stop_reason(found),
        "stop_sequence": None,
        "usage": {"input_tokens": found.prompt_tokens, "output_tokens": found.completion_tokens},
    }


def _event(kind: str, data: dict[str, object]) -> bytes:
    return encode(orjson.dumps({"type": kind, **data}), kind)


class MockMessagesAdapter:
    """Anthropic Messages (and token counting, in words)."""

    async def complete(self, call: Call) -> Reply:
        found = answer(call.model, call.body)
        if call.operation == "count_tokens":
            return Reply(orjson.dumps({"input_tokens": found.prompt_tokens}))
        return Reply(orjson.dumps(_message(call, found, _content(found))))

    async def open_stream(self, call: Call) -> MockMessagesStream:
        return MockMessagesStream(call, answer(call.model, call.body))


class MockMessagesStream:
    def __init__(self, call: Call, found: MockAnswer) -> None:
        self._call = call
        self._answer = found

    def failure(self, exc: Exception) -> GatewayError | None:
        return None  # no transport: whatever fails is a bug

    async def chunks(self) -> AsyncIterator[bytes]:
        found = self._answer
        start = _message(self._call, found, [])
        start["stop_reason"] = None
        start["usage"] = {"input_tokens": found.prompt_tokens, "output_tokens": 0}
        yield _event("message_start", {"message": start})
        index = 0
        if found.pieces and found.text:
            yield _event(
                "content_block_start",
                {"index": index, "content_block": {"type": "text", "text": ""}},
            )
            for piece in found.pieces:
                delta = {"type": "text_delta", "text": piece}
                yield _event("content_block_delta", {"index": index, "delta": delta})
            yield _event("content_block_stop", {"index": index})
            index += 1
        if found.tool_call is not None:
            block = _content(found)[-1]
            yield _event(
                "content_block_start",
                {"index": index, "content_block": {**block, "input": {}}},
            )
            delta = {
                "type": "input_json_delta",
                "partial_json": orjson.dumps(found.tool_call.arguments).decode(),
            }
            yield _event("content_block_delta", {"index": index, "delta": delta})
            yield _event("content_block_stop", {"index": index})
        yield _event(
            "message_delta",
            {
                "delta": {"stop_reason": _stop_reason(found), "stop_sequence": None},
                "usage": {"output_tokens": found.completion_tokens},
            },
        )
        yield _event("message_stop", {})

    def close(self) -> None:
        return None

    async def finish(self) -> None:
        return None
