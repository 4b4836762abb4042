"""One SSE codec (``runestone.streams.sse``): every path that reads an upstream's events
reads them with the same bounded, linear reader, and writes them with one encoder.

End to end, an upstream event that never ends stops every path at the same bound, fast;
and each translated path gives the same bytes however the upstream's reads cut its
events (at every byte boundary).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from runestone.errors import GatewayError
from runestone.providers.responses import _bridge
from runestone.providers.translated import TranslatedStream
from runestone.streams.sse import EventReader, encode, split_events
from runestone.translate.chat_anthropic.chat_to_messages import ChatChunks
from runestone.translate.chat_anthropic.messages_events import MessageEvents
from runestone.translate.responses_chat.answer import ResponsesEvents
from tests.conftest import MakeGateway
from tests.servers import FakeProvider, anthropic_stream, stream_events

LIMIT = 1024 * 1024
HI = [{"role": "user", "content": "hi"}]


# --- the reader ------------------------------------------------------------------------------


STREAM = b"".join(stream_events("m", ["Hel", "lo", " there", "!"], usage=True))


def test_the_reader_gives_the_same_events_however_the_bytes_are_cut() -> None:
    whole = split_events(STREAM)
    for size in (1, 2, 3, 7, 64, len(STREAM)):
        for crlf in (False, True):
            data = STREAM.replace(b"\n", b"\r\n") if crlf else STREAM
            reader = EventReader("p", limit=LIMIT)
            out = b"".join(reader.feed(data[i : i + size]) for i in range(0, len(data), size))
            assert split_events(out.replace(b"\r\n", b"\n")) == whole, (size, crlf)
            assert reader.rest() == b""


def test_the_reader_is_linear_and_bounded() -> None:
    reader = EventReader("p", limit=8 * LIMIT)
    piece = b"x" * 100
    started = time.monotonic()
    for _ in range(40_000):  # 4 MB in small reads, never an end
        assert reader.feed(piece) == b""
    assert time.monotonic() - started < 2

    def feed_on() -> None:
        for _ in range(50_000):
            reader.feed(piece)

    with pytest.raises(GatewayError) as caught:
        feed_on()
    assert caught.value.code == "upstream_invalid_response"
    assert reader.rest() == b""  # what was held is let go


def test_one_encoder() -> None:
    assert encode(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert encode(b"{}", "ping") == b"event: ping\ndata: {}\n\n"


# --- every translated path, cut at every byte boundary ------------------------------------


class Pieces:
    """An upstream stream that delivers fixed bytes in reads of ``size``."""

    def __init__(self, data: bytes, size: int) -> None:
        self._data = data
        self._size = size

    async def chunks(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self._data), self._size):
            yield self._data[i : i + self._size]

    def failure(self, exc: Exception) -> GatewayError | None:
        return None

    def close(self) -> None:
        pass

    async def finish(self) -> None:
        pass


def chat_to_anthropic() -> Any:
    chunks = ChatChunks("claude", True)

    def translate(kind: str | None, data: bytes) -> bytes:
        payload = orjson.loads(data)
        return chunks.event(kind or payload["type"], payload)

    return translate, None


def messages_to_openai() -> Any:
    events = MessageEvents()

    def translate(kind: str | None, data: bytes) -> bytes:
        if data == b"[DONE]":
            return events.finish()
        return events.chunk(orjson.loads(data))

    return translate, None


def responses_bridge() -> Any:
    return _bridge(ResponsesEvents({"model": "m", "input": "hi"}), "p")


PATHS = {
    "chat to Anthropic": (chat_to_anthropic, b"".join(anthropic_stream("claude", ["Hi", "!"]))),
    "Messages to OpenAI": (messages_to_openai, STREAM),
    "Responses bridge": (responses_bridge, STREAM),
}


async def _translated(make: Any, data: bytes, size: int) -> bytes:
    translate, at_end = make()
    stream = TranslatedStream(Pieces(data, size), translate, "p", at_end, limit=LIMIT)
    return b"".join([piece async for piece in stream.chunks()])


@pytest.mark.parametrize("path", list(PATHS))
def test_a_translated_path_is_the_same_however_its_upstream_is_cut(path: str) -> None:
    make, data = PATHS[path]
    whole = asyncio.run(_translated(make, data, len(data)))
    assert whole
    for size in (1, 2, 5, 13, 64):
        for source in (data, data.replace(b"\n", b"\r\n")):
            cut = asyncio.run(_translated(make, source, size))
            assert _normalized(cut) == _normalized(whole), (path, size)


def _normalized(out: bytes) -> list[object]:
    """The events' data, without the ids and times each stream makes afresh."""
    return [
        _without_ids(orjson.loads(line[6:]))
        for event in split_events(out)
        for line in event.split(b"\n")
        if line.startswith(b"data: ") and line != b"data: [DONE]"
    ]


def _without_ids(value: object) -> object:
    if isinstance(value, dict):
        volatile = ("id", "item_id", "created", "created_at")
        return {k: _without_ids(v) for k, v in value.items() if k not in volatile}
    if isinstance(value, list):
        return [_without_ids(v) for v in value]
    return value


# --- end to end: an event that never ends, on every path --------------------------------------


def endless_event(prefix: bytes) -> Any:
    async def behaviour(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        try:
            await response.write(prefix)
            for _ in range(128):  # 8 MiB of one event that never ends
                await response.write(b"x" * 65536)
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    return behaviour


ROUTES = {
    "pass-through": ("/v1/chat/completions", "o", "chat"),
    "chat to Anthropic": ("/v1/chat/completions", "a", "chat"),
    "Messages to OpenAI": ("/v1/messages", "o", "messages"),
    "Responses bridge": ("/v1/responses", "b", "responses"),
}


@pytest.mark.parametrize("route", list(ROUTES))
def test_an_event_that_never_ends_stops_every_path_at_the_bound(
    make_gateway: MakeGateway, fake: FakeProvider, route: str
) -> None:
    first = b"".join(stream_events("m", ["Hi"])[:2])
    start = b"".join(anthropic_stream("claude", ["Hi"])[:4])
    fake.on("endless", endless_event(first + b'data: {"x": "'))
    fake.on("endless-claude", endless_event(start + b'event: ping\ndata: {"x": "'))
    yaml = (
        f"providers:\n  bridged: {{base_url: '{fake.url}/v1', responses: bridge}}\n"
        "aliases:\n  o: openai:endless\n  a: anthropic:endless-claude\n  b: bridged:endless\n"
    )
    env = {"ANTHROPIC_BASE_URL": fake.url, "ANTHROPIC_API_KEY": "sk-ant-test"}
    gateway = make_gateway(yaml, env=env, max_event_bytes=LIMIT)
    path, model, kind = ROUTES[route]
    body: dict[str, Any] = {"model": model, "stream": True}
    if kind == "responses":
        body |= {"input": "hi", "max_output_tokens": 5}
    else:
        body |= {"messages": HI, "max_tokens": 5}
    started = time.monotonic()
    answer = httpx.post(gateway.url + path, json=body, timeout=30)
    elapsed = time.monotonic() - started
    assert answer.status_code == 200
    assert "upstream_invalid_response" in answer.text[-2000:], answer.text[-500:]
    assert str(LIMIT) in answer.text[-2000:]
    assert elapsed < 2, elapsed
