"""OpenAI chat completions to Anthropic and Anthropic Messages to OpenAI-compatible
targets, translated by the gateway's own pure functions.

The request goes over the same upstream wire as the pass-through (so the same
timeouts, errors and connection reuse); the translation is ``runestone.translate``'s:
no SDK objects, one ``orjson`` decode per event. any-llm stays for every other provider
and is the oracle the differential tests compare this with.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import orjson

from runestone.errors import GatewayError, error_for
from runestone.providers.adapter import Call, Reply, UpstreamStream
from runestone.providers.errors import map_stream_error_event
from runestone.providers.openai_compat import SessionAdapter
from runestone.providers.wire import Wire
from runestone.streams import loads_object
from runestone.streams.sse import MAX_EVENT_BYTES, EventReader, split_events
from runestone.translate import messages_arguments
from runestone.translate.chat_anthropic.chat_to_messages import (
    ChatChunks,
    chat_completion,
    messages_request,
)
from runestone.translate.chat_anthropic.messages_events import MessageEvents
from runestone.translate.chat_anthropic.messages_to_chat import chat_request, message
from runestone.translate.chat_anthropic.prompt_cache import with_breakpoints

#: One upstream event (its type, or None for a data-only event, and its data) to the
#: client's bytes; raises a ``GatewayError`` for an in-band error.
Translate = Callable[[str | None, bytes], bytes]


class _Post(SessionAdapter):
    """POST the translated request to the target, as the pass-through does."""

    def __init__(self, wire: Wire, path: str, build: Callable[[Call], object], **kw: Any) -> None:
        super().__init__(wire, **kw)
        self._path = path
        self._build = build

    def _prepare(self, call: Call) -> tuple[str, bytes, Mapping[str, str]]:
        with _client_shapes(call.provider):
            body = self._build(call)
        return self._path, orjson.dumps(body), call.endpoint.headers


class _TranslatingAdapter:
    """The request, the answer and the stream translated; everything else pass-through."""

    PATH = ""
    WHAT = ""  # what the upstream's answer should be, for the error

    def __init__(self, wire: Wire, *, max_body: int, max_event: int = MAX_EVENT_BYTES) -> None:
        self._post = _Post(wire, self.PATH, self._request, max_body=max_body)
        self._max_event = max_event

    def _request(self, call: Call) -> object:
        raise NotImplementedError

    def _answer(self, data: object) -> dict[str, Any] | None:
        """The client's answer for the upstream's decoded one, or None if it is not one."""
        raise NotImplementedError

    def _translator(self, call: Call) -> Translate:
        raise NotImplementedError

    async def complete(self, call: Call) -> Reply:
        reply = await self._post.complete(call)
        try:
            data = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            data = None
        with _upstream_shapes(call.provider):
            answer = self._answer(data)
        if answer is None:
            raise error_for(
                "upstream_invalid_response",
                f"{call.provider} answered with something that is not {self.WHAT}",
                provider=call.provider,
            )
        return Reply(orjson.dumps(answer))

    async def open_stream(self, call: Call) -> TranslatedStream:
        upstream = await self._post.open_stream(call)
        translate = self._translator(call)
        return TranslatedStream(upstream, translate, call.provider, limit=self._max_event)


class ChatToAnthropicAdapter(_TranslatingAdapter):
    """OpenAI chat completions to an Anthropic Messages target."""

    PATH = "/v1/messages"
    WHAT = "an Anthropic message"

    def _request(self, call: Call) -> object:
        request = messages_request(call.body, call.model)
        return with_breakpoints(request) if call.prompt_cache else request

    def _answer(self, data: object) -> dict[str, Any] | None:
        if not isinstance(data, dict) or data.get("type") != "message":
            return None
        return chat_completion(data)

    def _translator(self, call: Call) -> Translate:
        options = call.body.get("stream_options")
        asked = isinstance(options, dict) and bool(options.get("include_usage"))
        # Anthropic always reports usage: the chunk is made whether the client asked or
        # not (``add_stream_usage``), and the scanner hides it from a client that did not.
        chunks = ChatChunks(call.model, asked or call.add_stream_usage)
        provider = call.provider

        def translate(kind: str | None, data: bytes) -> bytes:
            payload = loads_object(data)
            if payload is None:
                return b""
            kind = kind or str(payload.get("type", ""))
            if kind == "error":
                raise map_stream_error_event(provider, payload.get("error"))
            return chunks.event(kind, payload)

        return translate


class MessagesToOpenAIAdapter(_TranslatingAdapter):
    """Anthropic Messages to an OpenAI chat completions target."""

    PATH = "/chat/completions"
    WHAT = "a chat completion"

    def _request(self, call: Call) -> object:
        arguments = messages_arguments(call.target_body(), call.provider)
        request = chat_request(arguments, call.model)
        if not call.endpoint.spec.stream_usage:  # a server that refuses stream_options
            request.pop("stream_options", None)
        return request

    def _answer(self, data: object) -> dict[str, Any] | None:
        if not isinstance(data, dict) or "choices" not in data:
            return None
        return message(data)

    def _translator(self, call: Call) -> Translate:
        events = MessageEvents()
        provider = call.provider

        def translate(kind: str | None, data: bytes) -> bytes:
            if data == b"[DONE]":
                return events.finish()
            payload = loads_object(data)
            if payload is None:
                return b""
            if "error" in payload:
                raise map_stream_error_event(provider, payload["error"])
            return events.chunk(payload)

        return translate


class TranslatedStream:
    """An upstream SSE stream read event by event, as the client's protocol.

    Its events are cut by the one bounded reader (``EventReader``); each read's complete
    events are translated together and go out as one piece. An in-band error ends the
    stream after what the events before it produced; ``at_end`` may add the client's
    ending to an upstream that ended without its own.
    """

    __slots__ = ("_at_end", "_limit", "_provider", "_translate", "_upstream", "headers")

    def __init__(
        self,
        upstream: UpstreamStream,
        translate: Translate,
        provider: str,
        at_end: Callable[[], bytes] | None = None,
        *,
        limit: int = MAX_EVENT_BYTES,
    ) -> None:
        self._upstream = upstream
        self._translate = translate
        self._provider = provider
        self._at_end = at_end
        self._limit = limit
        #: Headers the translation has for the client (``Reply.headers``).
        self.headers: tuple[tuple[bytes, bytes], ...] = ()

    async def chunks(self) -> AsyncIterator[bytes]:
        reader = EventReader(self._provider, limit=self._limit)
        async for piece in self._upstream.chunks():
            complete = reader.feed(piece)
            if not complete:
                continue
            out: list[bytes] = []
            try:
                self._translate_into(out, split_events(complete))
            except GatewayError:
                if out:
                    yield b"".join(out)
                raise
            if out:
                yield b"".join(out)
        out = []
        tail = reader.rest()
        if tail.strip():  # a last event without its blank line is still an event
            self._translate_into(out, [tail])
        if self._at_end is not None:
            out.append(self._at_end())
        if any(out):
            yield b"".join(out)

    def _translate_into(self, out: list[bytes], events: list[bytes]) -> None:
        translate = self._translate
        try:  # one handler for the whole read: a context manager per event costs more
            for event in events:
                kind, payload = _parse(event)
                if payload is None:
                    continue
                produced = translate(kind, payload)
                if produced:
                    out.append(produced)
        except _SHAPE_ERRORS as exc:
            raise _unreadable(self._provider, exc) from None

    def failure(self, exc: Exception) -> GatewayError | None:
        return self._upstream.failure(exc)

    def close(self) -> None:
        self._upstream.close()

    async def finish(self) -> None:
        await self._upstream.finish()


def _parse(event: bytes) -> tuple[str | None, bytes | None]:
    """An event's type (None if it names none) and its data (None for a comment)."""
    kind: str | None = None
    data: bytes | None = None
    for line in event.split(b"\n"):  # a CR before a LF is stripped with the value
        if line.startswith(b"data:"):
            part = line[5:].strip()
            data = part if data is None else data + b"\n" + part
        elif line.startswith(b"event:"):
            kind = line[6:].strip().decode()
    return kind, data


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
        raise _unreadable(provider, exc) from None


def _unreadable(provider: str, exc: Exception) -> GatewayError:
    return error_for(
        "upstream_invalid_response",
        f"{provider}'s answer could not be translated ({type(exc).__name__}: {exc})",
        provider=provider,
    )
