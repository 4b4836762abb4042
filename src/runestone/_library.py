"""The backend behind the library calls ``route_chat`` and ``route_stream``.

One backend per event loop (an aiohttp session belongs to one loop): an in-process
``Gateway``, whose requests go through an ``Exchange`` as the server's do (the same
admission, limits, accounting and telemetry), or with ``RUNESTONE_GATEWAY_MODE=true`` a
client of a central Runestone server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import weakref
from collections.abc import AsyncGenerator
from typing import Protocol

import orjson

from runestone._gateway import Gateway
from runestone.access import digest
from runestone.aliases import KeySpec
from runestone.config import Settings
from runestone.errors import error_for
from runestone.exchange import Exchange
from runestone.protocols import CHAT
from runestone.providers import known_provider_names
from runestone.providers._session import make_session
from runestone.remote import RemoteBackend


class Backend(Protocol):
    async def chat_bytes(
        self, body: dict[str, object], request_id: str, key: str | None = None
    ) -> bytes: ...

    def stream_bytes(
        self, body: dict[str, object], request_id: str, key: str | None = None
    ) -> AsyncGenerator[bytes, None]: ...

    async def aclose(self) -> None: ...


class LocalBackend:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def _admitted(self, exchange: Exchange, body: dict[str, object], key: str | None) -> None:
        if key is not None:
            exchange.use_key(client_key(exchange, key))
        await exchange.guard_request(body)
        await exchange.admit(body, orjson.dumps(body))

    async def chat_bytes(
        self, body: dict[str, object], request_id: str, key: str | None = None
    ) -> bytes:
        with Exchange(self.gateway, CHAT, request_id).lifetime() as exchange:
            await self._admitted(exchange, body, key)
            routed = await exchange.complete(body)
            if exchange.guards_output:
                await exchange.guard_answer(routed)
            exchange.answered(routed)
            return routed.reply.body

    async def stream_bytes(
        self, body: dict[str, object], request_id: str, key: str | None = None
    ) -> AsyncGenerator[bytes, None]:
        with Exchange(self.gateway, CHAT, request_id).lifetime() as exchange:
            await self._admitted(exchange, body, key)
            routed = await exchange.open_stream(body)
            exchange.stream_started()
            events = routed.events()
            if exchange.guards_output:
                events = exchange.guard_stream(routed)(events)
            try:
                async for event in events:
                    yield event
            except BaseException:
                routed.client_gone = True  # the caller stopped reading: cut short
                routed.cancel()
                raise
            finally:
                await events.aclose()
                exchange.stream_ended(routed, client_gone=routed.client_gone)
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

    async def chat_bytes(
        self, body: dict[str, object], request_id: str, key: str | None = None
    ) -> bytes:
        return await self._remote.chat_bytes(body, request_id, key)

    def stream_bytes(
        self, body: dict[str, object], request_id: str, key: str | None = None
    ) -> AsyncGenerator[bytes, None]:
        return self._remote.stream_bytes(body, request_id, key)

    async def aclose(self) -> None:
        await self._session.close()


async def _create(settings: Settings) -> Backend:
    if settings.gateway_mode:
        return _Remote(settings)
    gateway = Gateway(settings, settings.alias_store(known_provider_names()))
    await gateway.start()
    return LocalBackend(gateway)


def client_key(exchange: Exchange, secret: str) -> KeySpec:
    """The alias file's key for ``secret`` (as the server looks one up), or the error."""
    key = exchange.table.access.keys.get(digest(secret))
    if key is None:
        raise error_for(
            "unauthorized",
            "the key given to route_chat/route_stream (key=...) is not one of the alias "
            "file's keys: pass a key that 'runestone keys create' made, or no key",
        )
    if key.expired(dt.datetime.now(dt.UTC).date()):
        raise error_for(
            "key_expired", f"key {key.id!r} expired on {key.expires}: ask for a new one"
        )
    return key


async def aclose() -> None:
    """Close this event loop's library backend (its HTTP session and alias watcher)."""
    current = _defaults.pop(asyncio.get_running_loop(), None)
    if current is not None:
        await current.aclose()
