"""The response cache at the HTTP edge: a hit sent as its client first received it, and
a relayed stream's bytes kept (bounded) to be stored if it ends cleanly."""

from __future__ import annotations

from runestone.cache import Decision, Entry
from runestone.http._asgi import Message, Send, header_value, send_json

CACHE_HEADER = b"x-runestone-cache"


async def send_hit(send: Send, entry: Entry, request_id: str) -> None:
    """The stored answer, whole (a stream's events in one piece), and what it saved."""
    headers = [
        (b"content-type", entry.content_type.encode("latin-1")),
        (b"x-request-id", request_id.encode()),
        (b"x-runestone-target", header_value(entry.target)),
        (b"x-runestone-attempts", b"0"),
        (CACHE_HEADER, b"hit"),
        (b"x-runestone-cost-usd", b"0.00000000"),
    ]
    if entry.cost is not None:
        headers.append((b"x-runestone-cache-saved-usd", b"%.8f" % entry.cost))
    if entry.stream:
        headers.append((b"cache-control", b"no-cache"))
    await send_json(send, 200, entry.body, headers)


def cache_header(decision: Decision | None) -> list[tuple[bytes, bytes]]:
    return [] if decision is None else [(CACHE_HEADER, decision.state.encode())]


class StreamTap:
    """``send`` for a relay, keeping a copy of the body it sends, up to ``limit`` bytes
    (past it, nothing is kept: an answer too large for the cache is not cached)."""

    __slots__ = ("_send", "content_type", "kept", "limit", "size")

    def __init__(self, send: Send, limit: int) -> None:
        self._send = send
        self.limit = limit
        self.kept: list[bytes] | None = []
        self.size = 0
        self.content_type = "text/event-stream"

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            kept = self.kept
            if kept is not None:
                body: bytes = message.get("body", b"")
                self.size += len(body)
                if self.size > self.limit:
                    self.kept = None
                elif body:
                    kept.append(body)
        elif kind == "http.response.start":
            for name, value in message.get("headers", ()):
                if name == b"content-type":
                    self.content_type = value.decode("latin-1")
        await self._send(message)

    def body(self) -> bytes | None:
        return None if self.kept is None else b"".join(self.kept)
