"""The Responses bridge's way back: chat-completion chunks in, Responses events out.

Fed through the same ``TranslatedStream`` the gateway uses, from upstream reads cut
anywhere: the events must be the same whatever the cut, numbered without a gap, their
text and arguments whole at the end, and an in-band error must end the stream after
everything that came before it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from runestone.errors import GatewayError
from runestone.providers.responses import _bridge
from runestone.providers.translated import TranslatedStream
from runestone.translate.responses_chat.answer import ResponsesEvents

TEXT = ["Hel", "lo, ", '"wörld"', "\n", "\\ \u2028 ", "🙂", "!"]


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    payload = {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def call(index: int, arguments: str, name: str | None = None) -> dict[str, Any]:
    function: dict[str, Any] = {"arguments": arguments}
    if name is not None:
        function["name"] = name
    entry: dict[str, Any] = {"index": index, "function": function}
    if name is not None:
        entry["id"] = f"call_{index}"
        entry["type"] = "function"
    return {"tool_calls": [entry]}


CHAT = b"".join(
    [
        chunk({"role": "assistant", "content": ""}),
        *(chunk({"content": piece}) for piece in TEXT),
        chunk(call(0, "", "weather")),
        chunk(call(1, '{"ci', "time")),
        *(chunk(call(0, piece)) for piece in ['{"ci', 'ty": "Pa', 'ris"}']),
        chunk(call(1, 'ty": "Rome"}')),
        chunk({}, "tool_calls"),
        b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12}}\n\n',
        b"data: [DONE]\n\n",
    ]
)


class Upstream:
    """An upstream stream whose reads are the given pieces."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def chunks(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece

    def close(self) -> None:
        pass

    async def finish(self) -> None:
        pass


def bridged(pieces: list[bytes]) -> tuple[list[dict[str, Any]], bytes]:
    events = ResponsesEvents({"model": "m", "input": "Hi"})
    translate, at_end = _bridge(events, "chatonly")
    stream = TranslatedStream(Upstream(pieces), translate, "chatonly", at_end)

    async def read() -> bytes:
        return b"".join([piece async for piece in stream.chunks()])

    raw = asyncio.run(read())
    return parse(raw), raw


def parse(raw: bytes) -> list[dict[str, Any]]:
    found = []
    for event in raw.split(b"\n\n")[:-1]:
        kind, data = event.split(b"\n")
        payload = orjson.loads(data.removeprefix(b"data: "))
        assert kind == b"event: " + payload["type"].encode()
        found.append(payload)
    return found


def without_ids(raw: bytes) -> bytes:
    return re.sub(rb"(resp|msg|fc)_[0-9a-f]{24}", rb"\1_x", re.sub(rb'"created_at":\d+', b"", raw))


def test_the_events_of_a_text_and_two_calls() -> None:
    events, raw = bridged([CHAT])
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(e["delta"] for e in deltas) == "".join(TEXT)
    (done,) = [e for e in events if e["type"] == "response.output_text.done"]
    assert done["text"] == "".join(TEXT)
    arguments = {
        e["output_index"]: e["arguments"]
        for e in events
        if e["type"] == "response.function_call_arguments.done"
    }
    assert arguments == {1: '{"city": "Paris"}', 2: '{"city": "Rome"}'}
    final = events[-1]
    assert final["type"] == "response.completed"
    output = final["response"]["output"]
    assert output[0]["content"][0]["text"] == "".join(TEXT)
    assert [item.get("arguments") for item in output[1:]] == list(arguments.values())
    assert final["response"]["usage"]["total_tokens"] == 21
    # A text delta is written from a template: the bytes the general event writer gives.
    for event in deltas:
        assert orjson.dumps(event) in raw
        assert list(event) == [
            "type",
            "sequence_number",
            "item_id",
            "output_index",
            "content_index",
            "delta",
            "logprobs",
        ]


@pytest.mark.parametrize("size", [1, 7, 64, 500])
def test_reads_cut_anywhere_give_the_same_events(size: int) -> None:
    _, whole = bridged([CHAT])
    _, cut = bridged([CHAT[i : i + size] for i in range(0, len(CHAT), size)])
    assert without_ids(cut) == without_ids(whole)
    _, crlf = bridged([CHAT.replace(b"\n", b"\r\n")])
    assert without_ids(crlf) == without_ids(whole)


def test_an_error_in_a_read_ends_the_stream_after_what_came_before_it() -> None:
    error = b'data: {"error":{"message":"overloaded","type":"server_error"}}\n\n'
    first = chunk({"role": "assistant", "content": ""}) + chunk({"content": "Hal"})
    events = ResponsesEvents({"model": "m", "input": "Hi"})
    translate, at_end = _bridge(events, "chatonly")
    stream = TranslatedStream(Upstream([first + error]), translate, "chatonly", at_end)
    relayed: list[bytes] = []

    async def read() -> None:
        async for piece in stream.chunks():
            relayed.append(piece)

    with pytest.raises(GatewayError) as caught:
        asyncio.run(read())
    assert caught.value.code == "upstream_server_error"
    assert [e["type"] for e in parse(b"".join(relayed))][-1] == "response.output_text.delta"


def test_a_stream_that_ends_without_done_or_its_last_blank_line() -> None:
    no_done = CHAT.replace(b"data: [DONE]\n\n", b"")
    events, _ = bridged([no_done[:-2]])  # the usage chunk's blank line is missing too
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["usage"]["total_tokens"] == 21
    cut, _ = bridged(
        [
            CHAT.split(
                b'data: {"id":"c","object":"chat.completion.chunk","choices":'
                b'[{"index":0,"delta":{},"finish_reason":"tool_calls"'
            )[0]
        ]
    )
    assert cut[-1]["type"] != "response.completed"  # no finish reason: not complete


def test_nothing_after_the_end_is_translated() -> None:
    events, _ = bridged([CHAT + chunk({"content": "late"})])
    assert events[-1]["type"] == "response.completed"
    assert all(e.get("delta") != "late" for e in events)


def test_a_chunk_of_the_wrong_shape_is_the_upstreams_error() -> None:
    first = chunk({"role": "assistant", "content": ""}) + chunk({"content": "Hal"})
    events = ResponsesEvents({"model": "m", "input": "Hi"})
    translate, at_end = _bridge(events, "chatonly")
    odd = b'data: {"id":"c","choices":5}\n\n'
    stream = TranslatedStream(Upstream([first, odd]), translate, "chatonly", at_end)

    async def read() -> list[bytes]:
        return [piece async for piece in stream.chunks()]

    with pytest.raises(GatewayError) as caught:
        asyncio.run(read())
    assert caught.value.code == "upstream_invalid_response"
    assert "chatonly's answer could not be translated" in caught.value.message
