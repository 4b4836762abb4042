"""The SSE writer: a routed stream out to an ASGI client.

One ``ClientWatch`` per streamed request, started as soon as the body has been read:
while the gateway is still connecting (attempts, retries, the wait for first content) a
client that leaves cancels the connecting at once; once relaying, it cuts the upstream
the moment the client disconnects, and sends a comment heartbeat while the stream is
silent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TypeVar

from runestone.http._asgi import ClientGone, Receive, Send, header_value
from runestone.routing import RoutedStream
from runestone.streams import HEARTBEAT, SSE_HEADERS, StreamSummary
from runestone.streams.clocks import Clocks

T = TypeVar("T")

#: How long a streamed request connects before its client is watched (a task that waits
#: for the disconnect). An answer that arrives whole by then, as a short one does from an
#: upstream that writes it at once, is relayed without that task; a client that leaves
#: sooner is noticed this much later.
WATCH_AFTER = 0.05


class ClientState:
    """Where the client of a streamed request is: what it was sent, whether it left.
    (The stream's own state is the routed stream's: ``routing.StreamState``.)"""

    __slots__ = ("client_gone", "sent")

    def __init__(self) -> None:
        self.sent = 0
        #: Whether the client is gone (set by the watch, in another task).
        self.client_gone = False

    def left(self) -> bool:
        """``client_gone``, read where a type checker would think it cannot change."""
        return self.client_gone


def stream_headers(routed: RoutedStream) -> list[tuple[bytes, bytes]]:
    return [
        *SSE_HEADERS,
        (b"x-request-id", routed.request_id.encode()),
        (b"x-runestone-target", header_value(str(routed.target))),
        (b"x-runestone-attempts", str(routed.attempts).encode()),
        *routed.upstream_headers,
    ]


class ClientWatch:
    """Listens for the client's disconnect for the life of a streamed request (from
    ``WATCH_AFTER`` into it, or from the relay of an answer that is still arriving)."""

    __slots__ = (
        "_beating",
        "_clocks",
        "_connecting",
        "_receive",
        "_routed",
        "_seen",
        "_send",
        "_stopped",
        "_task",
        "interval",
        "state",
    )

    def __init__(self, receive: Receive, send: Send, interval: float) -> None:
        self._receive = receive
        self._send = send
        self.interval = interval
        self.state = ClientState()
        self._routed: RoutedStream | None = None
        self._connecting: asyncio.Task[object] | None = None
        # Its alarms: when the watch starts, and each heartbeat's check. Silence is
        # checked by an alarm, not by a timeout around every wait for the client: one
        # alarm per interval costs less than a timeout context per stream.
        self._clocks = Clocks()
        self._beating: asyncio.Task[None] | None = None
        self._seen = 0
        self._stopped = False
        self._task: asyncio.Task[None] | None = None
        self._clocks.after("watch", WATCH_AFTER, self._start)

    def _start(self) -> None:
        if self._task is None and not self._stopped:
            self._task = asyncio.create_task(self._watch())

    async def connecting(self, work: Awaitable[T]) -> T:
        """Await ``work`` (opening the stream) unless the client leaves first: ClientGone."""
        task = asyncio.current_task()
        assert task is not None
        self._connecting = task
        try:
            return await work
        except asyncio.CancelledError:
            if self.state.client_gone and task.uncancel() == 0:
                raise ClientGone from None  # our cancel, not the server's
            raise
        finally:
            self._connecting = None

    def relaying(self, routed: RoutedStream, *, whole: bool) -> None:
        """The stream is accepted: a disconnect now cuts it, and silence gets heartbeats.

        A ``whole`` answer (it all came with the first content) is written at once: it
        has no silence, and nothing to cut.
        """
        self._routed = routed
        if whole:
            return
        self._clocks.cancel("watch")
        self._start()
        self._seen = self.state.sent
        self._clocks.after("heartbeat", self.interval, self._check_silence)

    def stop(self) -> None:
        # Let go of the task as it is cancelled: it keeps its CancelledError, whose
        # traceback holds this watch (the coroutine's ``self``); holding the task here
        # too would make a cycle of the whole stream that only the collector could free.
        self._stopped = True
        self._clocks.stop()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        beating, self._beating = self._beating, None
        if beating is not None:  # not yet written (uvicorn writes without awaiting)
            beating.cancel()  # a heartbeat after the stream's end would be an error

    def _check_silence(self) -> None:
        """Each interval while relaying: a heartbeat if nothing went out since the last."""
        state = self.state
        if self._stopped or state.client_gone:
            return
        if state.sent == self._seen and self._beating is None:
            self._beating = asyncio.create_task(self._heartbeat())
        self._seen = state.sent
        self._clocks.after("heartbeat", self.interval, self._check_silence)

    async def _heartbeat(self) -> None:
        try:
            await self._send({"type": "http.response.body", "body": HEARTBEAT, "more_body": True})
        except OSError:
            pass  # the connection is gone: the watch hears the disconnect and ends the relay
        finally:
            self._beating = None

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.state.client_gone = True
                if self._routed is not None:
                    self._routed.client_left()  # cut now, or once its usage is in
                elif self._connecting is not None:
                    self._connecting.cancel()
                return


async def relay_to_client(
    routed: RoutedStream,
    watch: ClientWatch,
    send: Send,
    on_end: Callable[[ClientState], None],
    headers: list[tuple[bytes, bytes]] | None = None,
    before_end: Callable[[], Awaitable[None]] | None = None,
    through: Callable[[AsyncGenerator[bytes, None]], AsyncGenerator[bytes, None]] | None = None,
) -> None:
    """Send the 200, the stream and its end; ``on_end`` hears how it went, whatever happens.

    ``before_end`` is awaited before the piece that completes the stream goes out (what
    the client may act on next must be in place by then). ``through`` is what the events
    pass through on their way out (the output guards), a whole answer too.
    """
    state = watch.state
    if state.client_gone:  # between the first content and now
        routed.cancel()
        on_end(state)
        return
    whole = routed.summary.done  # the whole answer came with its first content
    watch.relaying(routed, whole=whole)
    start = stream_headers(routed)
    if headers:
        start += headers
    await send({"type": "http.response.start", "status": 200, "headers": start})
    # A whole answer is one piece: no generator to start (each one started is registered
    # with the event loop, and unregistered when collected).
    events = None if whole and through is None else routed.events()
    if events is not None and through is not None:
        events = through(events)
    try:
        if events is None:
            answer = routed.whole_answer()
            if before_end is not None:
                await before_end()
            if not state.client_gone:
                await send({"type": "http.response.body", "body": answer, "more_body": True})
                state.sent += 1
        else:
            # Relayed by a task of its own: each upstream read then resumes only the
            # relay's few frames, not the request's whole stack (server, middleware,
            # endpoint). Cancelling this task (the server's) cancels the one it awaits.
            summary = routed.summary
            await asyncio.create_task(_pump(events, state, send, summary, before_end))
    except BaseException:
        routed.close()
        raise
    finally:
        watch.stop()
        if events is not None:
            await events.aclose()
        on_end(state)
    if state.left():
        routed.cancel()
        return
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    await routed.aclose()


async def _pump(
    events: AsyncIterator[bytes],
    state: ClientState,
    send: Send,
    summary: StreamSummary,
    before_end: Callable[[], Awaitable[None]] | None,
) -> None:
    async for piece in events:
        if state.client_gone:  # set by the watch, in another task
            # Read on to the end, sending nothing: the routed stream was cut (the relay
            # ends at once) or is being read for its usage, for a bounded time.
            continue
        if before_end is not None and summary.done:
            await before_end()
            before_end = None
        await send({"type": "http.response.body", "body": piece, "more_body": True})
        state.sent += 1
