"""The bare forwarder's twin on pyreqwest (reqwest/hyper in Rust) instead of aiohttp:
uvicorn + pyreqwest, no features at all.

The ceiling for a Python gateway whose upstream wire is pyreqwest (issue 30's target:
Runestone on pyreqwest at most 1.33x this); bench/instructions.py reports it with
``--bare aiohttp,reqwest``.

    uvicorn bench.bare_forwarder_reqwest:app --loop uvloop --http httptools --port 9103
"""

from __future__ import annotations

import os
from typing import Any

from pyreqwest.client import Client, ClientBuilder

UPSTREAM = os.environ.get("BARE_UPSTREAM", "http://127.0.0.1:9100/v1/chat/completions")
_client: Client | None = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _client
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _client = ClientBuilder().build()
                await send({"type": "lifespan.startup.complete"})
            else:
                assert _client is not None
                await _client.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    assert _client is not None
    request = (
        _client.post(UPSTREAM)
        .header("content-type", "application/json")
        .body_bytes(body)
        # No read-ahead: pyreqwest's default holds back the first 64 KB of a body, which
        # for a stream is the whole answer (a forwarder that does not relay events).
        .streamed_read_buffer_limit(0)
        .build_streamed()
    )
    async with request as upstream:
        # Streams are told by the upstream's answer, as in bench/bare_forwarder.py.
        streamed = (upstream.headers.get("content-type") or "").startswith("text/event-stream")
        kind = b"text/event-stream" if streamed else b"application/json"
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]}
        )
        reader = upstream.body_reader
        while (piece := await reader.read_chunk()) is not None:
            await send({"type": "http.response.body", "body": bytes(piece), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
