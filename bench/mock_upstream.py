"""A fast OpenAI-compatible mock upstream for the benchmark (not for tests).

A bare asyncio protocol with canned responses, so that the upstream costs far less than
the gateway under test. A request whose body contains ``"stream":true`` gets an SSE
answer of CHUNKS events, each its own write; any other gets one completion.

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


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def stream_chunks(count: int) -> list[bytes]:
    head = b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    head += b'"model":"bench-model","choices":[{"index":0,"delta":'
    events = [head + b'{"role":"assistant","content":""},"finish_reason":null}]}\n\n']
    events += [head + b'{"content":"tok%d "},"finish_reason":null}]}\n\n' % i for i in range(count)]
    events.append(head + b'{},"finish_reason":"stop"}]}\n\n')
    events.append(b"data: [DONE]\n\n")
    return [_chunked(e) for e in events] + [b"0\r\n\r\n"]


class MockProtocol(asyncio.Protocol):
    def __init__(self, chunks: list[bytes]) -> None:
        self.buffer = b""
        self.chunks = chunks
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
            if b'"stream":true' in body or b'"stream": true' in body:
                self.transport.write(STREAM_HEAD)
                self._send_from(0)
            else:
                self.transport.write(RESPONSE)

    def _send_from(self, index: int) -> None:
        # One event per loop turn, so events leave as separate writes the way a real
        # server emits tokens, rather than as one coalesced block.
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(self.chunks[index])
        if index + 1 < len(self.chunks):
            asyncio.get_running_loop().call_soon(self._send_from, index + 1)


async def serve(port: int, chunks: int) -> None:
    loop = asyncio.get_running_loop()
    pieces = stream_chunks(chunks)
    server = await loop.create_server(lambda: MockProtocol(pieces), "127.0.0.1", port, backlog=4096)
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
