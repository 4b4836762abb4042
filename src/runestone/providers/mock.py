"""The ``mock`` provider: answers locally, for demos, tests and load tests.

Chosen only by naming it (``mock:echo``), never as a fallback. Models:

- ``mock:echo``  repeats the last user message;
- ``mock:lorem`` answers ``max_tokens`` words of filler (default 20), one per chunk when
  streamed, for load tests.

Token counts are words, not a tokenizer's count: the mock has no real model.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator

import orjson

from runestone.errors import error_for
from runestone.providers.adapter import Call, Reply

MODELS = ("echo", "lorem")
_LOREM = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
]


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return " ".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _answer(call: Call) -> list[str]:
    if call.model == "echo":
        messages = call.body.get("messages")
        last = ""
        if isinstance(messages, list):
            for message in reversed(messages):
                if isinstance(message, dict) and message.get("role") == "user":
                    last = _text_of(message.get("content"))
                    break
        words = last.split(" ")
        return [w if i == 0 else " " + w for i, w in enumerate(words)]
    max_tokens = call.body.get("max_tokens") or call.body.get("max_completion_tokens") or 20
    count = max(1, min(int(max_tokens), 4096)) if isinstance(max_tokens, int) else 20
    return [(" " if i else "") + _LOREM[i % len(_LOREM)] for i in range(count)]


def _prompt_tokens(call: Call) -> int:
    messages = call.body.get("messages")
    if not isinstance(messages, list):
        return 0
    return sum(len(_text_of(m.get("content")).split()) for m in messages if isinstance(m, dict))


class MockAdapter:
    async def complete(self, call: Call) -> Reply:
        pieces = self._pieces(call)
        completion = len(pieces)
        prompt = _prompt_tokens(call)
        body = {
            "id": f"chatcmpl-mock-{os.urandom(6).hex()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": f"mock:{call.model}",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(pieces)},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
        return Reply(orjson.dumps(body))

    async def open_stream(self, call: Call) -> MockStream:
        return MockStream(call, self._pieces(call))

    def _pieces(self, call: Call) -> list[str]:
        if call.model not in MODELS:
            raise error_for(
                "model_not_found",
                f"the mock provider has no model {call.model!r}; "
                f"use one of {', '.join('mock:' + m for m in MODELS)}",
                provider="mock",
            )
        return _answer(call)


class MockStream:
    def __init__(self, call: Call, pieces: list[str]) -> None:
        self._call = call
        self._pieces = pieces

    async def chunks(self) -> AsyncIterator[bytes]:
        call = self._call
        head = (
            b'{"id":"chatcmpl-mock-' + os.urandom(6).hex().encode() + b'",'
            b'"object":"chat.completion.chunk","created":'
            + str(int(time.time())).encode()
            + b',"model":'
            + orjson.dumps(f"mock:{call.model}")
            + b',"choices":'
        )
        yield b"data: " + head + b'[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
        for piece in self._pieces:
            delta = orjson.dumps([{"index": 0, "delta": {"content": piece}}])
            yield b"data: " + head + delta + b"}\n\n"
        yield b"data: " + head + b'[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
        options = call.body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            prompt, completion = _prompt_tokens(call), len(self._pieces)
            usage = orjson.dumps(
                {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                }
            )
            yield b"data: " + head + b'[],"usage":' + usage + b"}\n\n"
        yield b"data: [DONE]\n\n"

    def close(self) -> None:
        return None

    async def finish(self) -> None:
        return None
