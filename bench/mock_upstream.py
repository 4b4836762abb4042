"""A fast OpenAI-compatible mock upstream for the benchmark (not for tests).

A bare asyncio protocol with canned responses, so that the upstream costs far less than
the gateway under test. A request whose body contains ``"stream":true`` gets an SSE
answer of CHUNKS events; any other gets one completion. Requests to ``/v1/messages`` get
Anthropic's shapes, others OpenAI's. Like real providers, an OpenAI stream ends with a
usage chunk when the request asks for one (``stream_options.include_usage``). The model
name chooses how the events are written, as real traffic arrives:

- by default each event is its own write, one per loop turn;
- a model with ``coalesced`` in its name gets every event in one write (many per read);
- ``spaced``: a write every 2 ms, as tokens come from a model;
- ``tools``: a tool call whose arguments arrive in CHUNKS pieces.

    python bench/mock_upstream.py --port 9100 [--chunks 50]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re

COMPLETION = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,'
    b'"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant",'
    b'"content":"Hello! How can I help you today?"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18}}'
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(COMPLETION)).encode()
    + b"\r\n\r\n"
    + COMPLETION
)
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
_CONTENT_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.I)

MESSAGE = (
    b'{"id":"msg_bench","type":"message","role":"assistant","model":"bench-model",'
    b'"content":[{"type":"text","text":"Hello! How can I help you today?"}],'
    b'"stop_reason":"end_turn","stop_sequence":null,'
    b'"usage":{"input_tokens":9,"output_tokens":9}}'
)
MESSAGE_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(MESSAGE)).encode()
    + b"\r\n\r\n"
    + MESSAGE
)


RESPONSES_BODY = (
    b'{"id":"resp_bench","object":"response","created_at":1700000000,"status":"completed",'
    b'"model":"bench-model","output":[{"type":"message","id":"msg_bench","status":"completed",'
    b'"role":"assistant","content":[{"type":"output_text","text":"Hello! How can I help you '
    b'today?","annotations":[]}]}],"parallel_tool_calls":true,"tool_choice":"auto","tools":[],'
    b'"usage":{"input_tokens":9,"output_tokens":9,"total_tokens":18}}'
)
RESPONSES_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(RESPONSES_BODY)).encode()
    + b"\r\n\r\n"
    + RESPONSES_BODY
)


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(kind: bytes, data: bytes) -> bytes:
    return b"event: " + kind + b"\ndata: " + data + b"\n\n"


def anthropic_chunks(count: int) -> list[bytes]:
    """Anthropic's event sequence, with CHUNKS text deltas."""
    events = [
        _event(
            b"message_start",
            b'{"type":"message_start","message":{"id":"msg_bench",'
            b'"type":"message","role":"assistant","model":"bench-model","content":[],'
            b'"stop_reason":null,"stop_sequence":null,'
            b'"usage":{"input_tokens":9,"output_tokens":1}}}',
        ),
        _event(
            b"content_block_start",
            b'{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
        ),
        _event(b"ping", b'{"type":"ping"}'),
    ]
    events += [
        _event(
            b"content_block_delta",
            b'{"type":"content_block_delta","index":0,'
            b'"delta":{"type":"text_delta","text":"tok%d "}}' % i,
        )
        for i in range(count)
    ]
    events += [
        _event(b"content_block_stop", b'{"type":"content_block_stop","index":0}'),
        _event(
            b"message_delta",
            b'{"type":"message_delta","delta":{"stop_reason":"end_turn",'
            b'"stop_sequence":null},"usage":{"output_tokens":%d}}' % count,
        ),
        _event(b"message_stop", b'{"type":"message_stop"}'),
    ]
    return [_chunked(e) for e in events] + [b"0\r\n\r\n"]


def responses_chunks(count: int) -> list[bytes]:
    """The Responses API's event sequence, with CHUNKS text deltas."""
    shell = (
        b'{"id":"resp_bench","object":"response","created_at":1700000000,"status":"%s",'
        b'"model":"bench-model","output":[],"parallel_tool_calls":true,"tool_choice":"auto",'
        b'"tools":[],"usage":%s}'
    )
    pending = shell % (b"in_progress", b"null")
    item = b'"item_id":"msg_bench","output_index":0,"content_index":0'
    kinds = [
        (b"response.created", b'"response":' + pending),
        (b"response.in_progress", b'"response":' + pending),
        (
            b"response.output_item.added",
            b'"output_index":0,"item":{"type":"message","id":"msg_bench",'
            b'"status":"in_progress","role":"assistant","content":[]}',
        ),
    ]
    kinds += [
        (b"response.output_text.delta", item + b',"delta":"tok%d "' % i) for i in range(count)
    ]
    usage = b'{"input_tokens":9,"output_tokens":%d,"total_tokens":%d}' % (count, count + 9)
    kinds.append((b"response.completed", b'"response":' + shell % (b"completed", usage)))
    events = [
        _event(kind, b'{"type":"%s","sequence_number":%d,%s}' % (kind, n, rest))
        for n, (kind, rest) in enumerate(kinds)
    ]
    return [_chunked(e) for e in events] + [b"0\r\n\r\n"]


_CHUNK_HEAD = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"bench-model","choices":[{"index":0,"delta":'
)
_USAGE_CHUNK = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"bench-model","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":50,'
    b'"total_tokens":59,"prompt_tokens_details":{"cached_tokens":0},'
    b'"completion_tokens_details":{"reasoning_tokens":0}}}\n\n'
)


def stream_chunks(count: int, usage: bool = False, tools: bool = False) -> list[bytes]:
    head = _CHUNK_HEAD
    if tools:
        events = [
            head + b'{"role":"assistant","content":null,"tool_calls":[{"index":0,'
            b'"id":"call_bench","type":"function","function":{"name":"lookup",'
            b'"arguments":""}}]},"finish_reason":null}]}\n\n'
        ]
        events += [
            head + b'{"tool_calls":[{"index":0,"function":{"arguments":"{\\"k%d\\": 1, "}}]},'
            b'"finish_reason":null}]}\n\n' % i
            for i in range(count)
        ]
        events.append(head + b'{},"finish_reason":"tool_calls"}]}\n\n')
    else:
        events = [head + b'{"role":"assistant","content":""},"finish_reason":null}]}\n\n']
        events += [
            head + b'{"content":"tok%d "},"finish_reason":null}]}\n\n' % i for i in range(count)
        ]
        events.append(head + b'{},"finish_reason":"stop"}]}\n\n')
    if usage:
        events.append(_USAGE_CHUNK)
    events.append(b"data: [DONE]\n\n")
    return [_chunked(e) for e in events] + [b"0\r\n\r\n"]


_MODEL = re.compile(rb'"model":\s*"([^"]*)"')
_INCLUDE_USAGE = re.compile(rb'"include_usage":\s*true')


class MockProtocol(asyncio.Protocol):
    def __init__(
        self, streams: dict[tuple[bool, bool], list[bytes]], anthropic: list[bytes],
        responses: list[bytes],
    ) -> None:  # fmt: skip
        self.buffer = b""
        self.openai_streams = streams  # by (tools, usage)
        self.anthropic_chunks = anthropic
        self.responses_chunks = responses
        self.chunks = streams[(False, False)]
        self.gap = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            match = _CONTENT_LENGTH.search(head)
            length = int(match.group(1)) if match else 0
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            body = self.buffer[end + 4 : total]
            self.buffer = self.buffer[total:]
            assert self.transport is not None
            anthropic = head.startswith(b"POST /v1/messages")
            responses = head.startswith(b"POST /v1/responses")
            if b'"stream":true' in body or b'"stream": true' in body:
                found = _MODEL.search(body)
                model = found.group(1) if found else b""
                usage = _INCLUDE_USAGE.search(body) is not None
                self.chunks = (
                    self.anthropic_chunks
                    if anthropic
                    else self.responses_chunks
                    if responses
                    else self.openai_streams[(b"tools" in model, usage)]
                )
                self.transport.write(STREAM_HEAD)
                if b"coalesced" in model:
                    self.transport.write(b"".join(self.chunks))
                else:
                    self.gap = 0.002 if b"spaced" in model else 0.0
                    self._send_from(0)
            elif responses:
                self.transport.write(RESPONSES_RESPONSE)
            else:
                self.transport.write(MESSAGE_RESPONSE if anthropic else RESPONSE)

    def _send_from(self, index: int) -> None:
        # One event per loop turn, so events leave as separate writes the way a real
        # server emits tokens, rather than as one coalesced block.
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(self.chunks[index])
        if index + 1 < len(self.chunks):
            loop = asyncio.get_running_loop()
            if self.gap:
                loop.call_later(self.gap, self._send_from, index + 1)
            else:
                loop.call_soon(self._send_from, index + 1)


async def serve(port: int, chunks: int) -> None:
    loop = asyncio.get_running_loop()
    streams = {
        (tools, usage): stream_chunks(chunks, usage, tools)
        for tools in (False, True)
        for usage in (False, True)
    }
    anthropic, responses = anthropic_chunks(chunks), responses_chunks(chunks)
    server = await loop.create_server(
        lambda: MockProtocol(streams, anthropic, responses), "127.0.0.1", port, backlog=4096
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--chunks", type=int, default=50)
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.chunks))


if __name__ == "__main__":
    main()
