"""The reference point: an ASGI forwarder with no features at all (uvicorn + aiohttp).

Whatever this reaches on a machine is the ceiling for a Python gateway built on the same
parts; bench/run.py reports Runestone next to it, measured in the same run.

    uvicorn bench.bare_forwarder:app --loop uvloop --http httptools --port 9102
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp

UPSTREAM = os.environ.get("BARE_UPSTREAM", "http://127.0.0.1:9100/v1/chat/completions")
_session: aiohttp.ClientSession | None = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _session
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
                await send({"type": "lifespan.startup.complete"})
            else:
                assert _session is not None
                await _session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    assert _session is not None
    headers = {"content-type": "application/json"}
    async with _session.post(UPSTREAM, data=body, headers=headers) as upstream:
        # Streams are told by the upstream's answer, as any forwarder would: not by
        # searching the request for one spelling of "stream": true.
        if upstream.headers.get("content-type", "").startswith("text/event-stream"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
            async for piece in upstream.content.iter_any():
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            data = await upstream.read()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": data})
