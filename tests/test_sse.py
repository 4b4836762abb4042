"""The SSE relay: literal byte streams through the scanner, then real streams end to end."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from runestone.protocols.openai_chat import OpenAIStreamScanner
from runestone.streams.relay import relay_stream
from tests.conftest import MakeGateway
from tests.servers import FakeProvider, Gateway, StreamLog, chunk, send_stream, stream_events

EVENTS = stream_events("m", ["Hel", "lo"], usage=True)
WHOLE = b"".join(EVENTS)


async def relay(pieces: list[bytes]) -> tuple[bytes, OpenAIStreamScanner]:
    async def source() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    scanner = OpenAIStreamScanner("groq")
    out = b"".join([p async for p in relay_stream(source(), scanner, "req_1")])
    return out, scanner


async def test_clean_stream_is_relayed_unchanged_and_read() -> None:
    out, scanner = await relay(EVENTS)
    assert out == WHOLE
    assert scanner.summary.done
    assert scanner.summary.usage == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 9}
    assert scanner.summary.finish_reason == "stop"
    assert scanner.summary.error is None


@pytest.mark.parametrize("cut", range(1, len(WHOLE), 7))
async def test_events_split_across_reads_go_out_whole(cut: int) -> None:
    out, scanner = await relay([WHOLE[:cut], WHOLE[cut:]])
    assert out == WHOLE
    assert scanner.summary.done


async def test_one_byte_at_a_time() -> None:
    out, scanner = await relay([bytes([b]) for b in WHOLE])
    assert out == WHOLE
    assert scanner.summary.usage is not None


async def test_crlf_line_endings() -> None:
    crlf = WHOLE.replace(b"\n", b"\r\n")
    out, scanner = await relay([crlf[:50], crlf[50:]])
    assert out == crlf
    assert scanner.summary.done


async def test_comments_and_other_fields_are_relayed() -> None:
    pieces = [b": OPENROUTER PROCESSING\n\n", b"event: message\nid: 1\n", *EVENTS]
    out, _ = await relay(pieces)
    assert out == b"".join(pieces)


def error_events(out: bytes) -> list[dict[str, Any]]:
    found = []
    for event in out.split(b"\n\n"):
        if event.startswith(b"data: {") and b'"error"' in event:
            payload = orjson.loads(event[6:])
            if "error" in payload:
                found.append(payload)
    return found


async def test_no_done_means_interrupted() -> None:
    out, _ = await relay(EVENTS[:3])
    assert b"data: [DONE]" not in out
    (payload,) = error_events(out)
    assert payload["error"]["code"] == "upstream_stream_interrupted"
    assert payload["error"]["retryable"] is True
    assert payload["request_id"] == "req_1"
    assert out.startswith(b"".join(EVENTS[:3]))


async def test_cut_in_the_middle_of_an_event() -> None:
    out, _ = await relay([EVENTS[0], EVENTS[1][:20]])
    assert out.startswith(EVENTS[0])
    assert out.count(b'data: {"id"') == 1, "a partial event is never relayed"
    (payload,) = error_events(out)
    assert "in the middle of an event" in payload["error"]["message"]


async def test_in_band_error_event_replaces_the_rest() -> None:
    upstream_error = (
        b'data: {"error": {"message": "Overloaded", "type": "server_error", "code": null}}\n\n'
    )
    out, scanner = await relay([EVENTS[0], EVENTS[1] + upstream_error + EVENTS[2], *EVENTS[3:]])
    assert out.startswith(EVENTS[0] + EVENTS[1])
    assert EVENTS[2] not in out
    assert b"data: [DONE]" not in out
    (payload,) = error_events(out)
    assert payload["error"]["code"] == "upstream_server_error"
    assert payload["error"]["provider"] == "groq"
    assert "Overloaded" in payload["error"]["message"]
    assert scanner.summary.error is not None


async def test_openrouter_mid_stream_error_shape() -> None:
    event = (
        b'data: {"id":"gen-1","object":"chat.completion.chunk","error":{"code":502,'
        b'"message":"Provider disconnected"},"choices":[{"index":0,"delta":{"content":""},'
        b'"finish_reason":"error"}]}\n\n'
    )
    out, _ = await relay([EVENTS[0], event])
    (payload,) = error_events(out)
    assert payload["error"]["code"] == "upstream_server_error"


async def test_content_that_mentions_error_is_not_an_error() -> None:
    pieces = [chunk("m", {"content": '"error"'}), chunk("m", {"content": "[DONE]"}), *EVENTS]
    out, scanner = await relay(pieces)
    assert out == b"".join(pieces)
    assert scanner.summary.error is None


async def test_transport_failure_mid_stream() -> None:
    from runestone.providers.errors import map_transport_error

    async def source() -> AsyncIterator[bytes]:
        yield EVENTS[0]
        raise ConnectionResetError("reset by peer")

    def adapters(exc: Exception) -> Any:  # what the adapter's stream says of its transport
        return map_transport_error("openai", exc, streaming=True)

    scanner = OpenAIStreamScanner("openai")
    out = b"".join([p async for p in relay_stream(source(), scanner, None, failure=adapters)])
    (payload,) = error_events(out)
    assert payload["error"]["code"] == "upstream_stream_interrupted"
    # The relay knows no transport: what the adapter does not claim is a bug of ours.
    scanner = OpenAIStreamScanner("openai")
    out = b"".join([p async for p in relay_stream(source(), scanner, None)])
    (payload,) = error_events(out)
    assert payload["error"]["code"] == "internal_error"


# --- end to end, through a running gateway --------------------------------------------------


def post_stream(gateway: Gateway, model: str, **extra: Any) -> httpx.Response:
    # Asking for usage: these fakes always send the usage chunk, and it is relayed only
    # to clients that asked for it.
    body = {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hi"}],
    }
    return httpx.post(f"{gateway.base_url}/chat/completions", json={**body, **extra}, timeout=10)


def test_stream_headers(gateway: Gateway) -> None:
    response = post_stream(gateway, "smart")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.content.endswith(b"data: [DONE]\n\n")


def test_mid_stream_drop_ends_with_in_band_error_and_no_done(
    gateway: Gateway, fake: FakeProvider
) -> None:
    async def drop(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await send_stream(request, EVENTS[:3], then="drop")

    fake.on("gpt-4", drop)
    response = post_stream(gateway, "smart")
    assert response.status_code == 200
    assert response.content.startswith(b"".join(EVENTS[:3]))
    assert b"data: [DONE]" not in response.content
    (payload,) = error_events(response.content)
    assert payload["error"]["code"] == "upstream_stream_interrupted"
    assert payload["request_id"] == response.headers["x-request-id"]


def test_split_events_arrive_whole_end_to_end(gateway: Gateway, fake: FakeProvider) -> None:
    cuts = [WHOLE[i : i + 13] for i in range(0, len(WHOLE), 13)]

    async def dribble(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await send_stream(request, cuts, delay=0.002)

    fake.on("gpt-4", dribble)
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/chat/completions",
        json={
            "model": "smart",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "x"}],
        },
    ) as response:
        received = list(response.iter_raw())
    assert b"".join(received) == WHOLE
    for piece in received:
        assert piece.endswith(b"\n\n"), "every relayed piece ends on an event boundary"


def test_a_whole_answer_in_one_write_reaches_the_client_without_its_usage_chunk(
    gateway: Gateway, fake: FakeProvider
) -> None:
    # Relayed in one piece (no generator): still without the usage chunk the client did
    # not ask for, still counted, and the upstream connection still goes back to the pool.
    from tests.test_telemetry import scrape, value

    events = [chunk("m", {"content": f"w{i}"}) for i in range(40)] + EVENTS[3:]
    usage_event = events[-2]
    assert b'"usage"' in usage_event

    async def at_once(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await send_stream(request, [b"".join(events)])

    fake.on("gpt-4", at_once)
    before = value(scrape(gateway.url), "runestone_tokens_total", direction="output")
    for _ in range(3):
        with httpx.stream(
            "POST",
            f"{gateway.base_url}/chat/completions",
            json={"model": "smart", "stream": True, "messages": [{"role": "user", "content": "x"}]},
        ) as response:
            received = b"".join(response.iter_raw())
        assert received == b"".join(events).replace(usage_event, b"")
    metrics = scrape(gateway.url)
    assert value(metrics, "runestone_tokens_total", direction="output") == before + 3 * 2
    assert value(metrics, "runestone_stream_outcomes_total", outcome="complete") >= 3
    streams = [seen for seen in fake.seen if seen.body.get("stream")]
    assert len({seen.peer for seen in streams}) == 1  # read to its end: the connection reused


def test_upstream_refusal_before_the_stream_is_a_normal_http_error(
    gateway: Gateway, fake: FakeProvider
) -> None:
    async def refuse(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response(
            {
                "error": {
                    "message": "Rate limit reached",
                    "type": "requests",
                    "code": "rate_limit_exceeded",
                }
            },
            status=429,
            headers={"retry-after": "7"},
        )

    fake.on("gpt-4", refuse)
    response = post_stream(gateway, "smart")
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/json"
    assert response.headers["retry-after"] == "7"
    assert response.json()["error"]["code"] == "upstream_rate_limited"


def test_heartbeats_while_upstream_is_silent(make_gateway: MakeGateway, fake: FakeProvider) -> None:
    gateway = make_gateway(heartbeat_seconds=0.1)

    async def slow(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(EVENTS[0] + EVENTS[1])  # the first content, then silence
        await asyncio.sleep(0.55)
        for event in EVENTS[2:]:
            await response.write(event)
        await response.write_eof()
        return response

    fake.on("gpt-4", slow)
    response = post_stream(gateway, "smart")
    beats = response.content.count(b": keep-alive\n\n")
    assert 3 <= beats <= 6, beats
    assert response.content.replace(b": keep-alive\n\n", b"") == WHOLE


def test_heartbeats_between_chunks_leave_the_stream_whole(
    make_gateway: MakeGateway, fake: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    """Heartbeats due between chunks and as streams end: the answers stay whole, nothing
    is written after an end (uvicorn would raise), nothing is logged."""
    gateway = make_gateway(heartbeat_seconds=0.002)

    async def trickle(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await send_stream(request, EVENTS, delay=0.004)

    fake.on("gpt-4", trickle)
    beats = 0
    with caplog.at_level(logging.WARNING):
        for _ in range(20):
            response = post_stream(gateway, "smart")
            beats += response.content.count(b": keep-alive\n\n")
            assert response.content.replace(b": keep-alive\n\n", b"") == WHOLE
    assert beats > 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_client_disconnect_cancels_the_upstream(gateway: Gateway, fake: FakeProvider) -> None:
    log = StreamLog()

    async def endless(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        events = [chunk("m", {"content": f"w{i} "}) for i in range(400)]
        return await send_stream(request, events, delay=0.02, log=log)

    fake.on("gpt-4", endless)
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/chat/completions",
        json={"model": "smart", "stream": True, "messages": [{"role": "user", "content": "x"}]},
    ) as response:
        iterator = response.iter_raw()
        next(iterator)
        next(iterator)
        left_at = time.monotonic()
    deadline = left_at + 2
    while log.closed_at is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log.closed_at is not None, "the upstream never saw the connection close"
    assert log.closed_at - left_at < 1.0
    assert log.sent < 100


async def test_usage_read_when_done_arrives_in_a_big_block() -> None:
    many = [chunk("m", {"content": f"w{i}"}) for i in range(60)]
    block = b"".join([EVENTS[0], *many, *EVENTS[3:]])
    out, scanner = await relay([block[:500], block[500:]])
    assert out == block
    assert scanner.summary.usage == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 9}
    assert scanner.summary.finish_reason == "stop"


async def test_bytes_after_done_are_not_relayed() -> None:
    out, scanner = await relay([*EVENTS, b'data: {"late": true}\n\n'])
    assert out == WHOLE
    assert scanner.summary.done


def test_streams_reuse_the_upstream_connection(gateway: Gateway, fake: FakeProvider) -> None:
    async def done_then_end(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await send_stream(request, EVENTS, delay=0.001)  # the body's end comes last

    fake.on("gpt-4", done_then_end)
    for _ in range(3):
        assert post_stream(gateway, "smart").content == WHOLE
    assert len({seen.peer for seen in fake.seen}) == 1


def _spaced(event: bytes) -> bytes:
    """The same event as Python's json.dumps writes it: a space after every separator."""
    payload = json.loads(event[len(b"data: ") :])
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


@pytest.mark.parametrize("spelling", ["compact", "spaced"])
@pytest.mark.parametrize("reads", [1, 3])
async def test_usage_chunk_hidden_from_a_whole_answer_in_one_read(
    spelling: str, reads: int
) -> None:
    events = [chunk("m", {"content": f"w{i}"}) for i in range(80)] + EVENTS[3:]
    if spelling == "spaced":
        events = [_spaced(e) if e != b"data: [DONE]\n\n" else e for e in events]
    block = b"".join(events)
    usage_event = events[-2]
    assert b'"usage"' in usage_event and b'"choices"' in usage_event
    cut = len(block) // reads
    pieces = [block[i * cut : (i + 1) * cut] for i in range(reads - 1)]
    pieces.append(block[(reads - 1) * cut :])
    scanner = OpenAIStreamScanner("openai", hide_usage=True)
    out = b"".join([p async for p in relay_stream(_source(pieces), scanner, "req_1")])
    assert out == block.replace(usage_event, b"")
    assert scanner.summary.done
    assert scanner.summary.usage == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 9}
    assert scanner.summary.finish_reason == "stop"


async def test_usage_on_every_chunk_is_kept_and_the_last_counts() -> None:
    """Some servers put usage on each chunk, with its choices: those chunks are content."""

    def with_usage(event: bytes, tokens: int) -> bytes:
        payload = json.loads(event[len(b"data: ") :])
        payload["usage"] = {"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": 0}
        return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

    events = [with_usage(chunk("m", {"content": f"w{i}"}), i + 1) for i in range(3)]
    events += [with_usage(chunk("m", {}, "stop"), 3), b"data: [DONE]\n\n"]
    block = b"".join(events)
    scanner = OpenAIStreamScanner("openai", hide_usage=True)
    out = b"".join([p async for p in relay_stream(_source([block]), scanner, "req_1")])
    assert out == block
    assert scanner.summary.usage == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 0}
    assert scanner.summary.finish_reason == "stop"


async def test_done_written_in_content_does_not_end_the_stream() -> None:
    mention = chunk("m", {"content": "data: [DONE]\n\ndata: [DONE]"})
    block = b"".join([EVENTS[0], mention, *EVENTS[1:]])
    out, scanner = await relay([block])
    assert out == block
    assert scanner.summary.done and scanner.summary.finish_reason == "stop"


async def test_a_second_done_in_the_same_read_is_not_relayed() -> None:
    out, scanner = await relay([WHOLE + WHOLE])
    assert out == WHOLE
    assert scanner.summary.done


async def _source(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


def test_event_data_reads_every_short_event_as_reading_line_by_line_does() -> None:
    # event_data has a fast path for the usual one-line event; it must agree with the
    # plain reading (every data: line, CRLF or LF, joined) on everything.
    import itertools

    from runestone.streams.sse import event_data

    def line_by_line(event: bytes) -> bytes | None:
        lines = [
            line[5:].lstrip(b" ")
            for line in event.replace(b"\r\n", b"\n").split(b"\n")
            if line.startswith(b"data:")
        ]
        return b"\n".join(lines) if lines else None

    pieces = [b"data:", b" ", b"x", b"\n", b"\r", b":"]
    for size in range(1, 6):
        for parts in itertools.product(pieces, repeat=size):
            event = b"".join(parts)
            assert event_data(event) == line_by_line(event), event
    assert event_data(b'data: {"a":1}\n\n') == b'{"a":1}'


def test_first_content_is_told_as_the_regular_expression_it_replaced_tells_it() -> None:
    # has_content finds the first content with byte searches; the pattern it replaced
    # (text or a refusal that is not empty, a tool call, a finish, [DONE]) is the oracle.
    import itertools
    import re

    from runestone.protocols.anthropic_messages import AnthropicStreamScanner

    oracle = re.compile(
        rb'"content": ?"[^"]|"tool_calls"|"finish_reason": ?"|\[DONE\]|"refusal": ?"[^"]'
    )
    scanner = OpenAIStreamScanner("openai")
    pieces = [b'"content":', b'"refusal":', b" ", b'"', b"x", b'"tool_calls"', b"\n\n"]
    for size in range(1, 6):
        for parts in itertools.product(pieces, repeat=size):
            data = b"".join(parts)
            assert scanner.has_content(data) == bool(oracle.search(data)), data
    role = chunk("m", {"role": "assistant", "content": ""})
    assert not scanner.has_content(role)
    assert scanner.has_content(role + chunk("m", {"content": "Hi"}))
    assert scanner.has_content(chunk("m", {}, finish="stop"))
    assert scanner.has_content(b"data: [DONE]\n\n")
    anthropic = AnthropicStreamScanner("anthropic")
    assert not anthropic.has_content(b"event: message_start\ndata: {}\n\n")
    assert anthropic.has_content(b"event: content_block_delta\ndata: {}\n\n")
