"""Responses API requests: passed through where the provider serves the API, else bridged.

A provider row with ``responses=True`` (OpenAI, OpenRouter, Groq, xAI; ``responses:
native`` for one's own in the alias file) gets the request as the client sent it, model
rewritten. Every other target is reached through its chat-completions adapter: the
request is translated to chat completions (``translate.responses_chat.request``) and the
answer, whole or streamed, back (``translate.responses_chat.answer``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import orjson

from runestone.providers.adapter import Adapter, Call, Reply, UpstreamStream
from runestone.providers.errors import map_stream_error_event
from runestone.providers.translated import Translate, TranslatedStream
from runestone.streams.sse import MAX_EVENT_BYTES, loads_object
from runestone.translate.responses_chat.answer import ResponsesEvents, response_object
from runestone.translate.responses_chat.request import chat_request
from runestone.translate.responses_chat.tools import ToolMap

log = logging.getLogger("runestone.providers")

#: Names the hosted tools (``web_search``, ...) a bridged target could not run.
DROPPED_TOOLS = b"x-runestone-dropped-tools"


class ResponsesAdapter:
    def __init__(
        self, chat: Adapter, native: Adapter | None = None, *, max_event: int = MAX_EVENT_BYTES
    ) -> None:
        self._chat = chat
        self._native = native
        self._max_event = max_event

    def _bridged(self, call: Call, stream: bool) -> tuple[Call, ToolMap]:
        body, tools = chat_request(call.target_body(), call.provider)
        body["stream"] = stream
        if not stream or not call.endpoint.spec.stream_usage:
            body.pop("stream_options", None)
        if tools.dropped:
            log.info(
                "%s: %s dropped: %s runs no such tools (the bridge to chat completions)",
                call.request_id,
                ", ".join(tools.dropped),
                call.provider,
            )
        return replace(call, body=body, operation="chat", add_stream_usage=False), tools

    async def complete(self, call: Call) -> Reply:
        if self._native is not None and call.endpoint.spec.responses:
            return await self._native.complete(call)
        bridged, tools = self._bridged(call, stream=False)
        reply = await self._chat.complete(bridged)
        completion = orjson.loads(reply.body)
        answer = response_object({**call.body, "model": call.model}, completion, tools)
        return Reply(orjson.dumps(answer), headers=_dropped(tools))

    async def open_stream(self, call: Call) -> UpstreamStream:
        if self._native is not None and call.endpoint.spec.responses:
            return await self._native.open_stream(call)
        bridged, tools = self._bridged(call, stream=True)
        chat = await self._chat.open_stream(bridged)
        events = ResponsesEvents({**call.body, "model": call.model}, tools)
        translate, at_end = _bridge(events, call.provider)
        stream = TranslatedStream(chat, translate, call.provider, at_end, limit=self._max_event)
        stream.headers = _dropped(tools)
        return stream


def _dropped(tools: ToolMap) -> tuple[tuple[bytes, bytes], ...]:
    """The header that tells the client which of its tools the target could not run."""
    if not tools.dropped:
        return ()
    return ((DROPPED_TOOLS, ",".join(tools.dropped).encode()),)


def _bridge(events: ResponsesEvents, provider: str) -> tuple[Translate, Callable[[], bytes]]:
    """Chat-completion events in, Responses events out; and the end of a chat stream that
    completed (a finish reason came) without its ``[DONE]``."""

    def translate(kind: str | None, data: bytes) -> bytes:
        if events.finished:  # nothing after the end is part of the answer
            return b""
        if data == b"[DONE]":
            return events.end()
        payload = loads_object(data)
        if payload is None:
            return b""
        if payload.get("error"):
            raise map_stream_error_event(provider, payload["error"])
        return events.chunk(payload)

    def at_end() -> bytes:
        return events.end() if events.saw_finish and not events.finished else b""

    return translate, at_end
