"""The backend behind the library calls ``route_chat`` and ``route_stream``.

One backend per event loop (an aiohttp session belongs to one loop): the in-process
router, or with ``RUNESTONE_GATEWAY_MODE=true`` a client of a central Runestone server.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator
from typing import Protocol

import aiohttp

from runestone._session import make_session
from runestone.aliases import AliasStore
from runestone.breaker import Breakers
from runestone.config import Settings
from runestone.providers import known_provider_names
from runestone.remote import RemoteBackend
from runestone.router import Router


class Backend(Protocol):
    async def chat_bytes(self, body: dict[str, object], request_id: str) -> bytes: ...

    def stream_bytes(self, body: dict[str, object], request_id: str) -> AsyncIterator[bytes]: ...


class LocalBackend:
    def __init__(self, router: Router) -> None:
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


class _Default:
    def __init__(self, backend: Backend, session: aiohttp.ClientSession) -> None:
        self.backend = backend
        self.session = session
        self.watcher: asyncio.Task[None] | None = None


_defaults: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Default] = (
    weakref.WeakKeyDictionary()
)


async def default_backend() -> Backend:
    loop = asyncio.get_running_loop()
    current = _defaults.get(loop)
    if current is None:
        current = _defaults[loop] = _create(Settings.from_env())
    return current.backend


def _create(settings: Settings) -> _Default:
    session = make_session(
        connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout
    )
    if settings.gateway_mode:
        assert settings.gateway_url is not None
        return _Default(
            RemoteBackend(settings.gateway_url, settings.service_token, session), session
        )
    store = AliasStore.from_env(known_providers=known_provider_names())
    store.load()
    router = Router(store, session, breakers=Breakers(settings.breaker_config()))
    default = _Default(LocalBackend(router), session)
    default.watcher = asyncio.get_running_loop().create_task(store.watch(settings.watch))
    return default


async def aclose() -> None:
    """Close this event loop's library backend (its HTTP session and alias watcher)."""
    current = _defaults.pop(asyncio.get_running_loop(), None)
    if current is None:
        return
    if current.watcher is not None:
        current.watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await current.watcher
    if isinstance(current.backend, LocalBackend):
        await current.backend.router.aclose()
    await current.session.close()
