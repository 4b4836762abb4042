"""The narrow interface every wire-format adapter implements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from runestone.providers import Endpoint
from runestone.validation import Operation


@dataclass(frozen=True, slots=True)
class Call:
    """One attempt at one target: the request as the client sent it, and where it goes."""

    endpoint: Endpoint
    model: str
    body: dict[str, object]
    request_id: str
    operation: Operation = "chat"
    #: Client headers a same-format upstream should see (anthropic-version, anthropic-beta).
    forward_headers: tuple[tuple[str, str], ...] = ()
    #: Seconds of upstream silence allowed between reads (a stream's idle timeout).
    read_timeout: float | None = None
    #: Ask the upstream for a usage chunk the client did not ask for (it is hidden again).
    add_stream_usage: bool = False

    @property
    def provider(self) -> str:
        return self.endpoint.spec.name

    def target_body(self) -> dict[str, object]:
        """The client's body with ``model`` rewritten to the target's: all that changes."""
        if self.body.get("model") == self.model:
            return self.body
        return {**self.body, "model": self.model}


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete, successful, non-streamed answer in the client's wire format."""

    body: bytes
    content_type: bytes = b"application/json"


class UpstreamStream(Protocol):
    """An upstream stream that has been accepted (status 200) but not yet read."""

    def chunks(self) -> AsyncIterator[bytes]:
        """The raw bytes as they arrive; transport errors propagate."""
        ...

    def close(self) -> None:
        """Drop the upstream connection now (client gone, or failed)."""
        ...

    async def finish(self) -> None:
        """After a complete answer: read to the end of the body so the connection is reused."""
        ...


class Adapter(Protocol):
    async def complete(self, call: Call) -> Reply:
        """Send a non-streamed request; raise ``GatewayError`` on any failure."""
        ...

    async def open_stream(self, call: Call) -> UpstreamStream:
        """Send a streamed request; return once the upstream accepted it.

        A refusal (any HTTP error before the first byte) raises ``GatewayError``.
        """
        ...
