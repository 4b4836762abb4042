"""The upstream transport on aiohttp: the process's one ``ClientSession``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import aiohttp
from yarl import URL

from runestone.errors import GatewayError
from runestone.providers._session import close_now, make_session
from runestone.providers._specs import Endpoint
from runestone.providers.errors import (
    TRANSPORT_ERRORS,
    map_transport_error,
    map_transport_errors,
)

_DRAIN_SECONDS = 1.0


class AiohttpWire:
    __slots__ = ("session",)

    def __init__(self, *, connect_timeout: float, read_timeout: float) -> None:
        self.session = make_session(connect_timeout=connect_timeout, read_timeout=read_timeout)

    async def post(
        self, endpoint: Endpoint, path: str, query: str, body: bytes, headers: Mapping[str, str]
    ) -> AiohttpAnswer:
        if query:  # never cached: the query string is the client's to choose
            url = URL(endpoint.base_url + path + "?" + query, encoded=True)
        else:
            url = endpoint.url(path)
        provider = endpoint.spec.name
        # Redirects are never followed: a provider that redirects is misconfigured, and a
        # redirect could point the gateway at anything (itself included).
        with map_transport_errors(provider):
            resp = await self.session.post(url, data=body, headers=headers, allow_redirects=False)
        return AiohttpAnswer(resp, provider)

    def close_now(self) -> None:
        close_now(self.session)

    async def aclose(self) -> None:
        await self.session.close()


class AiohttpAnswer:
    __slots__ = ("_provider", "_resp", "response_headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse, provider: str) -> None:
        self._resp = resp
        self._provider = provider
        self.status = resp.status
        self.response_headers = resp.headers

    async def read(self, limit: int) -> tuple[bytes, bool]:
        resp = self._resp
        try:
            with map_transport_errors(self._provider):
                declared = resp.content_length
                if (
                    declared is not None
                    and declared <= limit
                    and not resp.headers.get("content-encoding")
                ):
                    return await resp.read(), False  # the common case: small, plain, known
                parts = []
                size = 0
                async for chunk in resp.content.iter_any():
                    size += len(chunk)
                    if size > limit:
                        parts.append(chunk[: len(chunk) - (size - limit)])
                        return b"".join(parts), True
                    parts.append(chunk)
                return b"".join(parts), False
        finally:
            self.close()

    def chunks(self) -> AsyncIterator[bytes]:
        return self._resp.content.iter_any()  # no generator frame of ours per chunk

    def failure(self, exc: Exception) -> GatewayError | None:
        if isinstance(exc, TRANSPORT_ERRORS):
            return map_transport_error(self._provider, exc, streaming=True)
        return None

    def drop_read_timeout(self) -> None:
        """Stop aiohttp's read timer, re-armed on every read: the relay bounds silence
        itself (``RoutedStream``). A timer armed by the last read still fires on time."""
        connection = self._resp.connection
        if connection is not None and connection.protocol is not None:
            connection.protocol.read_timeout = None

    def close(self) -> None:
        # An answer read to its end goes back to the keep-alive pool; any other is cut.
        if self._resp.content.at_eof():
            self._resp.release()
        else:
            self._resp.close()

    async def finish(self) -> None:
        # [DONE] usually arrives a write before the body's end; without reading that end,
        # every stream would cost a new upstream connection.
        content = self._resp.content
        if content.at_eof():  # the end came with [DONE], as it usually does
            self._resp.release()
            return
        try:
            async with asyncio.timeout(_DRAIN_SECONDS):
                while await content.readany():
                    pass
        except TRANSPORT_ERRORS as exc:
            exc.__traceback__ = None  # see relay_stream: aiohttp reuses the instance
            self._resp.close()
            return
        self._resp.release()
