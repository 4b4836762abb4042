"""The narrow interface every wire-format adapter implements."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from runestone.errors import GatewayError
from runestone.providers._specs import Endpoint
from runestone.providers.wire import Wire

#: What a client asked for, as an adapter sees it. Each client wire format (see
#: ``runestone.protocols``) serves one or more of these.
Operation = Literal["chat", "messages", "count_tokens", "embeddings", "responses"]

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Forwarded:
    """What of the client's request, besides the body, a same-format upstream sees."""

    #: Headers such as anthropic-version, anthropic-beta and the client's user-agent.
    headers: Mapping[str, str] = field(default_factory=dict)
    #: The client's query string, as sent (``beta=true`` on the Messages API).
    query: str = ""


NOTHING_FORWARDED = Forwarded()


# Call and Reply (and the router's Candidate) are built for every request, and are not
# frozen: a frozen dataclass sets each field through a call. Treat them as immutable all
# the same (``dataclasses.replace`` makes a changed copy).
@dataclass(slots=True)
class Call:
    """One attempt at one target: the request as the client sent it, and where it goes."""

    endpoint: Endpoint
    model: str
    body: dict[str, object]
    request_id: str
    operation: Operation = "chat"
    #: What a same-format upstream should see of the client's request besides the body.
    forward: Forwarded = NOTHING_FORWARDED
    #: Ask the upstream for a usage chunk the client did not ask for (it is hidden again).
    add_stream_usage: bool = False
    #: Place prompt-cache breakpoints when the request is translated (the alias's say).
    prompt_cache: bool = True

    @property
    def provider(self) -> str:
        return self.endpoint.spec.name

    def target_body(self) -> dict[str, object]:
        """The client's body with ``model`` rewritten to the target's: all that changes."""
        if self.body.get("model") == self.model:
            return self.body
        return {**self.body, "model": self.model}


@dataclass(slots=True)
class Reply:
    """A complete, successful, non-streamed answer in the client's wire format."""

    body: bytes
    content_type: bytes = b"application/json"
    #: Headers the adapter has for the client (what a translation had to leave out).
    headers: tuple[tuple[bytes, bytes], ...] = ()


class UpstreamStream(Protocol):
    """An upstream stream that has been accepted (status 200) but not yet read.

    One whose transport re-arms a read timer on every read may also offer
    ``drop_read_timeout()``: the routed stream then calls it once relaying, and bounds
    the upstream's silence itself with one timer per stream (``SilenceBound``).
    """

    def chunks(self) -> AsyncIterator[bytes]:
        """The raw bytes as they arrive; transport errors propagate."""
        ...

    def failure(self, exc: Exception) -> GatewayError | None:
        """The upstream's error for an exception reading ``chunks`` raised: what this
        adapter's transport raises when the upstream fails. None for anything else, which
        is then a bug of the gateway's (``internal_error``, never the upstream's fault).
        Asked only when reading fails, so the reads themselves cost nothing extra."""
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


@dataclass(slots=True)
class AdapterContext:
    """What adapters of one gateway share: the upstream wire and shared resources.

    ``shared`` hands out one instance per key (one any-llm client cache, say) that the
    gateway closes with ``aclose`` when it stops.
    """

    #: The process's upstream HTTP transport (``runestone.providers.wire``).
    wire: Wire
    #: The most an upstream's non-streamed answer may be, decompressed.
    max_upstream_body: int = 64 * 1024 * 1024
    #: The most one SSE event of an upstream may be, on every path that reads one.
    max_event_bytes: int = 4 * 1024 * 1024
    _shared: dict[str, Any] = field(default_factory=dict)

    def shared(self, key: str, factory: Callable[[], R]) -> R:
        found = self._shared.get(key)
        if found is None:
            found = self._shared[key] = factory()
        return found

    async def aclose(self) -> None:
        resources, self._shared = list(self._shared.values()), {}
        for resource in resources:
            close = getattr(resource, "aclose", None)
            if close is not None:
                await close()


#: Builds an adapter for one gateway; registered with ``register_adapter``.
AdapterFactory = Callable[[AdapterContext], Adapter]
