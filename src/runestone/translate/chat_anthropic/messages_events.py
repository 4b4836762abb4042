"""Chat completion chunks in, Anthropic Messages stream events out: a small state machine.

The stream half of ``messages_to_chat``. One difference from any-llm on purpose: a
stream the upstream cut before ``[DONE]`` gets no ``message_stop`` (any-llm closes it as
if complete), so the client can tell it was cut.
"""

from __future__ import annotations

import os
from typing import Any

import orjson

from runestone.streams.sse import encode
from runestone.translate import _checks as checks
from runestone.translate.chat_anthropic.messages_to_chat import STOP_REASONS, reasoning_of, usage


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return encode(orjson.dumps(data), kind)


class MessageEvents:
    """Chat completion chunks in, Anthropic Messages stream events (SSE bytes) out.

    Blocks open and close as the content changes kind (thinking, text, tool use), one
    at a time as Anthropic's own streams do: a tool call's block closes when the next
    call starts, and text that arrives during the calls follows as its own block.
    ``finish`` closes what is open and sends ``message_delta`` (stop reason, usage) and
    ``message_stop``. What the upstream sends is checked first (``_checks``): a field of
    the wrong type, or arguments for a call that has ended or never started, raise.
    """

    def __init__(self) -> None:
        self.started = False
        self._index = -1
        self._kind: str | None = None
        self._tool: int | None = None  # the open tool call's index in the chunks
        self._started: set[int] = set()  # every tool call the message started
        self._pending_text = ""
        self._stop: str | None = None
        self._usage: dict[str, Any] = {}

    def chunk(self, data: dict[str, Any]) -> bytes:
        out: list[bytes] = []
        if data.get("usage"):
            self._usage = data["usage"]
        if not self.started:
            self.started = True
            opening: dict[str, Any] = {
                "id": data.get("id") or f"msg_{os.urandom(12).hex()}",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": data.get("model"),
                "usage": {**usage(self._usage), "output_tokens": 0},
            }
            out.append(_event("message_start", {"type": "message_start", "message": opening}))
        choices = data.get("choices")
        if not choices:
            return b"".join(out)
        choice = choices[0]
        delta = choice.get("delta") or {}
        reasoning = reasoning_of(delta)
        if reasoning:
            self._open("thinking", {"type": "thinking", "thinking": ""}, out)
            out.append(self._delta({"type": "thinking_delta", "thinking": reasoning}))
        text = delta.get("content")
        if text is not None:
            checks.text(text, "content")
        if text and self._kind == "tool_use":
            self._pending_text += text
        elif text:
            self._open("text", {"type": "text", "text": ""}, out)
            out.append(self._delta({"type": "text_delta", "text": text}))
        refusal = delta.get("refusal")
        if refusal:
            self._stop = "refusal"
            self._open("refusal", {"type": "text", "text": ""}, out)
            out.append(self._delta({"type": "text_delta", "text": checks.text(refusal, "refusal")}))
        for call in delta.get("tool_calls") or []:
            self._tool_call(call, out)
        if choice.get("finish_reason"):
            self._close(out)
            if self._stop != "refusal":
                self._stop = STOP_REASONS.get(choice["finish_reason"], "end_turn")
        return b"".join(out)

    def _tool_call(self, call: dict[str, Any], out: list[bytes]) -> None:
        position = checks.index(call.get("index", 0), "tool call index")
        function = call.get("function") or {}
        if call.get("id") and position not in self._started:
            self._close(out)  # the block before it ends: one block open at a time
            self._index += 1
            self._kind = "tool_use"
            self._tool = position
            self._started.add(position)
            block = {
                "type": "tool_use",
                "id": checks.name(call["id"], "tool call id"),
                "name": checks.name(function.get("name"), "tool call name"),
                "input": {},
            }
            out.append(_start(self._index, block))
        given = function.get("arguments")
        if given is None or given == "":
            return
        arguments = checks.text(given, "tool call arguments")
        if position != self._tool:
            ended = "has ended" if position in self._started else "never started"
            raise ValueError(f"arguments came for tool call {position}, which {ended}")
        out.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))

    def finish(self) -> bytes:
        """The closing events, once the upstream said ``[DONE]``."""
        if not self.started:
            return b""
        out: list[bytes] = []
        self._close(out)
        if self._pending_text:
            self._index += 1
            start = {"type": "text", "text": ""}
            out.append(
                _event(
                    "content_block_start",
                    {"type": "content_block_start", "index": self._index, "content_block": start},
                )
            )
            text, self._pending_text = self._pending_text, ""
            out.append(self._delta({"type": "text_delta", "text": text}))
            out.append(
                _event("content_block_stop", {"type": "content_block_stop", "index": self._index})
            )
        final = {
            "type": "message_delta",
            "delta": {"stop_reason": self._stop or "end_turn", "stop_sequence": None},
            "usage": usage(self._usage),
        }
        out.append(_event("message_delta", final))
        out.append(_event("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def _open(self, kind: str, block: dict[str, Any], out: list[bytes]) -> None:
        if self._kind == kind:
            return
        self._close(out)
        self._index += 1
        self._kind = kind
        out.append(_start(self._index, block))

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _event(
            "content_block_delta",
            {"type": "content_block_delta", "index": self._index, "delta": delta},
        )

    def _close(self, out: list[bytes]) -> None:
        if self._kind is None:
            return
        self._kind = self._tool = None
        out.append(
            _event("content_block_stop", {"type": "content_block_stop", "index": self._index})
        )


def _start(index: int, block: dict[str, Any]) -> bytes:
    return _event(
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": block},
    )


def _delta(index: int, delta: dict[str, Any]) -> bytes:
    return _event(
        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    )
