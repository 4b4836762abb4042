"""Responses API requests: passed through where the provider serves the API, else bridged.

A provider row with ``responses=True`` (OpenAI, OpenRouter, Groq, xAI; ``responses:
native`` for one's own in the alias file) gets the request as the client sent it, model
rewritten. Every other target is reached through its chat-completions adapter: the
request is translated to chat completions (``translate.responses_request``) and the
answer, whole or streamed, back (``translate.responses_answer``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import orjson

from runestone.providers.adapter import Adapter, Call, Reply, UpstreamStream
from runestone.providers.errors import map_stream_error_event
from runestone.streams.sse import event_data, loads_object, one_event_each
from runestone.translate.responses_answer import ResponsesEvents, response_object
from runestone.translate.responses_request import chat_request


class ResponsesAdapter:
    def __init__(self, chat: Adapter, native: Adapter | None = None) -> None:
        self._chat = chat
        self._native = native

    def _bridged(self, call: Call, stream: bool) -> Call:
        body = chat_request(call.target_body(), call.provider)
        body["stream"] = stream
        if not stream:
            body.pop("stream_options", None)
        return replace(call, body=body, operation="chat", add_stream_usage=False)

    async def complete(self, call: Call) -> Reply:
        if self._native is not None and call.endpoint.spec.responses:
            return await self._native.complete(call)
        reply = await self._chat.complete(self._bridged(call, stream=False))
        completion = orjson.loads(reply.body)
        answer = response_object({**call.body, "model": call.model}, completion)
        return Reply(orjson.dumps(answer))

    async def open_stream(self, call: Call) -> UpstreamStream:
        if self._native is not None and call.endpoint.spec.responses:
            return await self._native.open_stream(call)
        chat = await self._chat.open_stream(self._bridged(call, stream=True))
        return BridgedStream(chat, ResponsesEvents({**call.body, "model": call.model}), call)


class BridgedStream:
    """A chat-completions stream, read as Responses events."""

    def __init__(self, chat: UpstreamStream, events: ResponsesEvents, call: Call) -> None:
        self._chat = chat
        self._events = events
        self._provider = call.provider

    async def chunks(self) -> AsyncIterator[bytes]:
        translator = self._events
        async for event in one_event_each(self._chat.chunks()):
            data = event_data(event)
            if data is None:
                continue
            if data.strip() == b"[DONE]":
                yield translator.end()
                return
            payload = loads_object(data)
            if payload is None:
                continue
            if payload.get("error"):
                raise map_stream_error_event(self._provider, payload["error"])
            out = translator.chunk(payload)
            if out:
                yield out
        if translator.saw_finish:  # a complete chat stream that lacked its [DONE]
            yield translator.end()

    def close(self) -> None:
        self._chat.close()

    async def finish(self) -> None:
        await self._chat.finish()
