"""The upstream HTTP transport under the adapters: one per process, chosen by setting.

Adapters POST and read answers through a ``Wire``; what is under it (aiohttp, or
pyreqwest's reqwest/hyper in Rust) is this module's choice, never an adapter's. Both
honour the same contract: connection pooling, the connect and read timeouts, redirects
never followed, the answer's body decompressed as it is read, proxies from the
environment, and a closed answer cutting its upstream request at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Literal, Protocol

from runestone.errors import GatewayError
from runestone.providers._specs import Endpoint
from runestone.providers.errors import Headers

#: The transports there are (``RUNESTONE_UPSTREAM_TRANSPORT``).
WireKind = Literal["aiohttp", "reqwest"]
WIRE_KINDS: tuple[WireKind, ...] = ("aiohttp", "reqwest")


class Answer(Protocol):
    """An upstream's answer whose head has arrived and whose body has not been read.

    It is also the ``UpstreamStream`` of a streamed request.
    """

    @property
    def status(self) -> int: ...

    @property
    def response_headers(self) -> Headers:
        """Looked up case-insensitively. (An upstream stream's ``headers``, if it has
        any, are the client's: what a translation has to say.)"""
        ...

    async def read(self, limit: int) -> tuple[bytes, bool]:
        """The body, decompressed, up to ``limit`` bytes; and whether there was more.

        Counting decompressed bytes bounds a decompression bomb as well as a plain huge
        answer. The answer is released (or cut, if more was left) afterwards.
        """
        ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    def failure(self, exc: Exception) -> GatewayError | None: ...

    def close(self) -> None:
        """Cut the upstream request now, unless its body was read to the end."""
        ...

    async def finish(self) -> None:
        """Read what is left of the body (briefly), so the connection is reused."""
        ...


class Wire(Protocol):
    async def post(
        self, endpoint: Endpoint, path: str, query: str, body: bytes, headers: Mapping[str, str]
    ) -> Answer:
        """POST to ``path`` below the endpoint's base URL (with the client's ``query``
        string, as sent, if any); return once the head of the answer arrived.

        A transport failure raises the matching ``GatewayError`` for the provider.
        """
        ...

    def close_now(self) -> None:
        """Cut every connection without awaiting anything (a forced exit)."""
        ...

    async def aclose(self) -> None: ...


def make_wire(kind: WireKind, *, connect_timeout: float, read_timeout: float) -> Wire:
    if kind == "reqwest":
        from runestone.providers.wire_reqwest import ReqwestWire

        return ReqwestWire(connect_timeout=connect_timeout, read_timeout=read_timeout)
    from runestone.providers.wire_aiohttp import AiohttpWire

    return AiohttpWire(connect_timeout=connect_timeout, read_timeout=read_timeout)
