"""OpenAI chat completions to Anthropic and Anthropic Messages to OpenAI-compatible
targets, translated by the gateway's own pure functions.

The request goes over the same aiohttp session as the pass-through (so the same
timeouts, errors and connection reuse); the translation is ``runestone.translate``'s:
no SDK objects, one ``orjson`` decode per event. any-llm stays for every other provider
and is the oracle the differential tests compare this with.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson

from runestone.errors import error_for
from runestone.providers.adapter import Call, Reply, UpstreamStream
from runestone.providers.errors import map_stream_error_event
from runestone.providers.openai_compat import SessionAdapter
from runestone.translate import messages_arguments
from runestone.translate.chat_to_messages import ChatChunks, chat_completion, messages_request
from runestone.translate.messages_events import MessageEvents
from runestone.translate.messages_to_chat import chat_request, message


class _MessagesPost(SessionAdapter):
    """POST the translated request to the target's Messages API, as the pass-through does."""

    def _prepare(self, call: Call) -> tuple[str, bytes, Any]:
        with _client_shapes(call.provider):
            body = messages_request(call.body, call.model)
        return "/v1/messages", orjson.dumps(body), call.endpoint.headers


class ChatToAnthropicAdapter:
    def __init__(self, session: aiohttp.ClientSession, *, max_body: int) -> None:
        self._post = _MessagesPost(session, max_body=max_body)

    async def complete(self, call: Call) -> Reply:
        reply = await self._post.complete(call)
        try:
            message = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            message = None
        if not isinstance(message, dict) or message.get("type") != "message":
            raise error_for(
                "upstream_invalid_response",
                f"{call.provider} answered with something that is not an Anthropic message",
                provider=call.provider,
            )
        with _upstream_shapes(call.provider):
            return Reply(orjson.dumps(chat_completion(message)))

    async def open_stream(self, call: Call) -> TranslatedStream:
        upstream = await self._post.open_stream(call)
        options = call.body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        return TranslatedStream(upstream, ChatChunks(call.model, include_usage), call.provider)


class TranslatedStream:
    """An Anthropic event stream read as chat completion chunks."""

    __slots__ = ("_chunks", "_provider", "_upstream")

    def __init__(self, upstream: UpstreamStream, chunks: ChatChunks, provider: str) -> None:
        self._upstream = upstream
        self._chunks = chunks
        self._provider = provider

    async def chunks(self) -> AsyncIterator[bytes]:
        translate = self._chunks.event
        tail = b""
        async for piece in self._upstream.chunks():
            data = tail + piece if tail else piece
            if b"\r" in data:
                data = data.replace(b"\r\n", b"\n")
            end = data.rfind(b"\n\n")
            if end < 0:
                tail = data
                continue
            tail = data[end + 2 :]
            out = []
            for event in data[:end].split(b"\n\n"):
                kind, payload = _parse(event)
                if kind is None:
                    continue
                if kind == "error":
                    raise map_stream_error_event(self._provider, payload.get("error"))
                with _upstream_shapes(self._provider):
                    produced = translate(kind, payload)
                if produced:
                    out.append(produced)
            if out:
                yield b"".join(out)

    def close(self) -> None:
        self._upstream.close()

    async def finish(self) -> None:
        await self._upstream.finish()


def _parse(event: bytes) -> tuple[str | None, dict[str, Any]]:
    """An event's type and its data object; (None, {}) for comments and blank events."""
    kind: str | None = None
    data = b""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            data = line[5:].strip() if not data else data + b"\n" + line[5:].strip()
        elif line.startswith(b"event:"):
            kind = line[6:].strip().decode()
    if not data:
        return None, {}
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None, {}
    if not isinstance(payload, dict):
        return None, {}
    return kind or str(payload.get("type", "")), payload


class _ChatPost(SessionAdapter):
    """POST the translated request to the target's chat completions API."""

    def _prepare(self, call: Call) -> tuple[str, bytes, Any]:
        arguments = messages_arguments(call.target_body(), call.provider)
        with _client_shapes(call.provider):
            body = chat_request(arguments, call.model)
        return "/chat/completions", orjson.dumps(body), call.endpoint.headers


class MessagesToOpenAIAdapter:
    def __init__(self, session: aiohttp.ClientSession, *, max_body: int) -> None:
        self._post = _ChatPost(session, max_body=max_body)

    async def complete(self, call: Call) -> Reply:
        reply = await self._post.complete(call)
        try:
            completion = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            completion = None
        if not isinstance(completion, dict) or "choices" not in completion:
            raise error_for(
                "upstream_invalid_response",
                f"{call.provider} answered with something that is not a chat completion",
                provider=call.provider,
            )
        with _upstream_shapes(call.provider):
            return Reply(orjson.dumps(message(completion)))

    async def open_stream(self, call: Call) -> ChunkStream:
        upstream = await self._post.open_stream(call)
        return ChunkStream(upstream, MessageEvents(), call.provider)


class ChunkStream:
    """A chat completion chunk stream read as Anthropic Messages events."""

    __slots__ = ("_events", "_provider", "_upstream")

    def __init__(self, upstream: UpstreamStream, events: MessageEvents, provider: str) -> None:
        self._upstream = upstream
        self._events = events
        self._provider = provider

    async def chunks(self) -> AsyncIterator[bytes]:
        events = self._events
        tail = b""
        async for piece in self._upstream.chunks():
            data = tail + piece if tail else piece
            if b"\r" in data:
                data = data.replace(b"\r\n", b"\n")
            end = data.rfind(b"\n\n")
            if end < 0:
                tail = data
                continue
            tail = data[end + 2 :]
            out = []
            for event in data[:end].split(b"\n\n"):
                payload = _data(event)
                if payload is None:
                    continue
                if payload == b"[DONE]":
                    out.append(events.finish())
                    continue
                try:
                    chunk = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(chunk, dict):
                    continue
                if "error" in chunk:
                    raise map_stream_error_event(self._provider, chunk["error"])
                with _upstream_shapes(self._provider):
                    out.append(events.chunk(chunk))
            if out:
                yield b"".join(out)

    def close(self) -> None:
        self._upstream.close()

    async def finish(self) -> None:
        await self._upstream.finish()


def _data(event: bytes) -> bytes | None:
    found = None
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            part = line[5:].strip()
            found = part if found is None else found + b"\n" + part
    return found


# The translators read decoded JSON of any shape: a field of the wrong type fails there
# as Python's errors, which these turn into the envelope's, blaming the right side.
_SHAPE_ERRORS = (AttributeError, TypeError, KeyError, ValueError, IndexError)


@contextlib.contextmanager
def _client_shapes(provider: str) -> Iterator[None]:
    try:
        yield
    except _SHAPE_ERRORS as exc:
        raise error_for(
            "invalid_request",
            f"the request cannot be translated for {provider}: a field has the wrong shape "
            f"({type(exc).__name__}: {exc})",
        ) from None


@contextlib.contextmanager
def _upstream_shapes(provider: str) -> Iterator[None]:
    try:
        yield
    except _SHAPE_ERRORS as exc:
        raise error_for(
            "upstream_invalid_response",
            f"{provider}'s answer could not be translated ({type(exc).__name__}: {exc})",
            provider=provider,
        ) from None
