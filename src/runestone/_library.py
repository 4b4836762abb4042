"""The backend behind the library calls ``route_chat`` and ``route_stream``.

One backend per event loop (an aiohttp session belongs to one loop): an in-process
``Gateway``, or with ``RUNESTONE_GATEWAY_MODE=true`` a client of a central Runestone
server.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from typing import Protocol

from runestone._gateway import Gateway
from runestone.aliases import AliasStore
from runestone.config import Settings
from runestone.providers import known_provider_names
from runestone.providers._session import make_session
from runestone.remote import RemoteBackend
from runestone.routing import Router


class Backend(Protocol):
    async def chat_bytes(self, body: dict[str, object], request_id: str) -> bytes: ...

    def stream_bytes(self, body: dict[str, object], request_id: str) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class LocalBackend:
    def __init__(self, gateway: Gateway, router: Router) -> None:
        self.gateway = gateway
        self.router = router

    async def chat_bytes(self, body: dict[str, object], request_id: str) -> bytes:
        return (await self.router.chat(body, request_id)).reply.body

    async def stream_bytes(self, body: dict[str, object], request_id: str) -> AsyncIterator[bytes]:
        routed = await self.router.open_stream(body, request_id)
        try:
            async for event in routed.events():
                yield event
        except BaseException:
            routed.close()
            raise
        await routed.aclose()

    async def aclose(self) -> None:
        await self.gateway.aclose()


_defaults: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Backend] = (
    weakref.WeakKeyDictionary()
)


async def default_backend() -> Backend:
    loop = asyncio.get_running_loop()
    current = _defaults.get(loop)
    if current is None:
        current = _defaults[loop] = await _create(Settings.from_env())
    return current


class _Remote:
    def __init__(self, settings: Settings) -> None:
        assert settings.gateway_url is not None
        self._session = make_session(
            connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout
        )
        self._remote = RemoteBackend(settings.gateway_url, settings.service_token, self._session)

    async def chat_bytes(self, body: dict[str, object], request_id: str) -> bytes:
        return await self._remote.chat_bytes(body, request_id)

    def stream_bytes(self, body: dict[str, object], request_id: str) -> AsyncIterator[bytes]:
        return self._remote.stream_bytes(body, request_id)

    async def aclose(self) -> None:
        await self._session.close()


async def _create(settings: Settings) -> Backend:
    if settings.gateway_mode:
        return _Remote(settings)
    gateway = Gateway(settings, AliasStore.from_env(known_providers=known_provider_names()))
    return LocalBackend(gateway, await gateway.start())


async def aclose() -> None:
    """Close this event loop's library backend (its HTTP session and alias watcher)."""
    current = _defaults.pop(asyncio.get_running_loop(), None)
    if current is not None:
        await current.aclose()
