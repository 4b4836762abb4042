"""The ``mock`` provider: answers locally, for demos, tests and load tests.

Chosen only by naming it (``mock:echo``), never as a fallback. It speaks every
operation the gateway serves: chat completions (here), Anthropic Messages
(``mock_messages``) and embeddings (here, deterministic vectors). What it says is in
``_mock_answers``: ``mock:echo``, ``mock:lorem``, ``mock:tool``.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from collections.abc import AsyncIterator

import orjson

from runestone.errors import GatewayError, error_for
from runestone.providers._mock_answers import MODELS, MockAnswer, answer
from runestone.providers.adapter import Call, Reply
from runestone.streams.sse import DONE_EVENT, encode

__all__ = ["MODELS", "MockAdapter", "MockEmbeddingsAdapter"]


def _usage(found: MockAnswer) -> dict[str, int]:
    completion = found.completion_tokens
    return {
        "prompt_tokens": found.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": found.prompt_tokens + completion,
    }


def _tool_calls(found: MockAnswer) -> list[dict[str, object]]:
    assert found.tool_call is not None
    return [
        {
            "index": 0,
            "id": f"call_mock_{os.urandom(6).hex()}",
            "type": "function",
            "function": {
                "name": found.tool_call.name,
                "arguments": orjson.dumps(found.tool_call.arguments).decode(),
            },
        }
    ]


class MockAdapter:
    """Chat completions."""

    async def complete(self, call: Call) -> Reply:
        found = answer(call.model, call.body)
        text = found.text if found.tool_call is None else found.text or None
        message: dict[str, object] = {"role": "assistant", "content": text}
        finish = "stop"
        if found.tool_call is not None:
            calls = _tool_calls(found)
            for tool_call in calls:
                tool_call.pop("index")
            message["tool_calls"] = calls
            finish = "tool_calls"
        body = {
            "id": f"chatcmpl-mock-{os.urandom(6).hex()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": f"mock:{call.model}",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": _usage(found),
        }
        return Reply(orjson.dumps(body))

    async def open_stream(self, call: Call) -> MockStream:
        return MockStream(call, answer(call.model, call.body))


class MockStream:
    def __init__(self, call: Call, found: MockAnswer) -> None:
        self._call = call
        self._answer = found

    def failure(self, exc: Exception) -> GatewayError | None:
        return None  # no transport: whatever fails is a bug

    async def chunks(self) -> AsyncIterator[bytes]:
        call, found = self._call, self._answer
        head = (
            b'{"id":"chatcmpl-mock-' + os.urandom(6).hex().encode() + b'",'
            b'"object":"chat.completion.chunk","created":'
            + str(int(time.time())).encode()
            + b',"model":'
            + orjson.dumps(f"mock:{call.model}")
            + b',"choices":'
        )
        yield encode(head + b'[{"index":0,"delta":{"role":"assistant","content":""}}]}')
        for piece in found.pieces:
            delta = orjson.dumps([{"index": 0, "delta": {"content": piece}}])
            yield encode(head + delta + b"}")
        finish = b'"stop"'
        if found.tool_call is not None:
            delta = orjson.dumps([{"index": 0, "delta": {"tool_calls": _tool_calls(found)}}])
            yield encode(head + delta + b"}")
            finish = b'"tool_calls"'
        yield encode(head + b'[{"index":0,"delta":{},"finish_reason":' + finish + b"}]}")
        options = call.body.get("stream_options")
        asked = isinstance(options, dict) and options.get("include_usage")
        if asked or call.add_stream_usage:  # hidden again from a client that did not ask
            yield encode(head + b'[],"usage":' + orjson.dumps(_usage(found)) + b"}")
        yield DONE_EVENT

    def close(self) -> None:
        return None

    async def finish(self) -> None:
        return None


_DIMENSIONS = 16


def _vector(text: str, dimensions: int) -> list[float]:
    """A unit vector that depends only on the text: equal texts, equal vectors."""
    raw = b""
    counter = 0
    while len(raw) < dimensions * 4:
        raw += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    values = [v / 2**32 - 0.5 for v in struct.unpack(f"<{dimensions}I", raw[: dimensions * 4])]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [round(v / norm, 6) for v in values]


class MockEmbeddingsAdapter:
    """Embeddings: deterministic vectors of ``dimensions`` (default 16) floats."""

    async def complete(self, call: Call) -> Reply:
        if call.model not in MODELS:
            answer(call.model, {})  # raises the mock's model_not_found
        raw = call.body.get("input")
        inputs = raw if isinstance(raw, list) else [raw]
        dimensions = call.body.get("dimensions")
        size = dimensions if isinstance(dimensions, int) and 0 < dimensions <= 4096 else None
        vectors = [_vector(str(item), size or _DIMENSIONS) for item in inputs]
        tokens = sum(len(str(item).split()) for item in inputs)
        body = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": vector}
                for i, vector in enumerate(vectors)
            ],
            "model": f"mock:{call.model}",
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return Reply(orjson.dumps(body))

    async def open_stream(self, call: Call) -> MockStream:
        raise error_for("invalid_request", "embeddings do not stream", provider="mock")
