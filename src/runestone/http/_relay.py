"""The SSE writer: a routed stream out to an ASGI client.

Relays each piece as it comes, sends a comment heartbeat while the stream is silent, and
cuts the upstream the moment the client disconnects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from runestone.http._asgi import Receive, Send, header_value
from runestone.routing import RoutedStream
from runestone.streams import HEARTBEAT, SSE_HEADERS


class StreamState:
    __slots__ = ("client_gone", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.client_gone = False


def stream_headers(routed: RoutedStream) -> list[tuple[bytes, bytes]]:
    return [
        *SSE_HEADERS,
        (b"x-request-id", routed.request_id.encode()),
        (b"x-runestone-target", header_value(str(routed.target))),
        (b"x-runestone-attempts", str(routed.attempts).encode()),
    ]


async def relay_to_client(
    routed: RoutedStream,
    receive: Receive,
    send: Send,
    heartbeat_seconds: float,
    on_end: Callable[[StreamState], None],
) -> None:
    """Send the 200, the stream and its end; ``on_end`` hears how it went, whatever happens."""
    state = StreamState()
    await send({"type": "http.response.start", "status": 200, "headers": stream_headers(routed)})
    watcher = asyncio.create_task(_watch_client(receive, send, state, routed, heartbeat_seconds))
    events = routed.events()
    try:
        async for piece in events:
            if state.client_gone:
                break
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            state.sent += 1
    except BaseException:
        routed.close()
        raise
    finally:
        watcher.cancel()
        await events.aclose()
        on_end(state)
    if state.client_gone:
        routed.cancel()
        return
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    await routed.aclose()


async def _watch_client(
    receive: Receive, send: Send, state: StreamState, routed: RoutedStream, interval: float
) -> None:
    """Cut the upstream the moment the client leaves; keep an idle client connection alive."""
    seen = -1
    while True:
        try:
            async with asyncio.timeout(interval):
                message = await receive()
        except TimeoutError:
            if state.sent == seen:
                await send({"type": "http.response.body", "body": HEARTBEAT, "more_body": True})
            seen = state.sent
            continue
        if message["type"] == "http.disconnect":
            state.client_gone = True
            routed.cancel()
            return
