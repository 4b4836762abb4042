"""The limits store's hot command, an EVALSHA, sent without the client library's work.

Every request with a key runs the store's script once or twice (batched per event-loop
turn). Through redis-py each call is about 500 Python calls (pool, retry, encoding,
callbacks): on this project's machine 150 µs of CPU, most of what keys on Redis cost
over keys on SQLite. Here a call is one write of the packed command on one pipelined
connection and one reply parsed by hiredis (the parser redis-py itself uses). The
connection settings come from the same URL, read by redis-py's own parser; everything
else the store does (reports, the write probe) stays on redis-py.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from typing import Any, cast

import hiredis
from redis.connection import SSLConnection, parse_url


class RedisReplyError(Exception):
    """Redis answered a command with an error."""


class _Connection(asyncio.Protocol):
    """One connection: commands written back to back, replies matched to them in order."""

    def __init__(self) -> None:
        self._parser = hiredis.Reader(encoding="utf-8")
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        parser.feed(data)
        while (reply := parser.gets()) is not False:
            waiter = self._waiting.popleft()
            if waiter.done():  # its caller gave up (a timeout): the reply is dropped
                continue
            if isinstance(reply, hiredis.ReplyError):
                waiter.set_exception(RedisReplyError(str(reply)))
            else:
                waiter.set_result(reply)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = exc or ConnectionError("redis closed the connection")
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionError(f"redis connection lost: {self.lost}"))

    def call(self, *parts: str | int) -> asyncio.Future[Any]:
        if self.lost is not None or self._transport is None:
            raise ConnectionError(f"redis connection lost: {self.lost}")
        self._transport.write(_pack(parts))
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        return waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _pack(parts: tuple[str | int, ...]) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part.encode() if isinstance(part, str) else str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class ScriptChannel:
    """Runs one Lua script by its SHA, loading it when Redis does not have it."""

    def __init__(self, url: str, source: str, timeout: float) -> None:
        self._options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        self._source = source
        self._sha = hashlib.sha1(source.encode()).hexdigest()
        self._timeout = timeout
        self._connection: _Connection | None = None
        self._connecting = asyncio.Lock()

    async def run(self, keys: list[str], args: list[str] | tuple[str, ...]) -> Any:
        command = ("EVALSHA", self._sha, len(keys), *keys, *args)
        for retry in (False, True):  # one retry on a fresh connection, as redis-py's
            connection = self._connection
            if connection is None or connection.lost is not None:
                connection = await self._connect()
            try:
                try:
                    return await connection.call(*command)
                except RedisReplyError as exc:
                    if not str(exc).startswith("NOSCRIPT"):
                        raise
                    await connection.call("SCRIPT", "LOAD", self._source)
                    return await connection.call(*command)
            except (ConnectionError, OSError):
                connection.close()
                if retry:
                    raise
        raise AssertionError("unreachable")

    async def _connect(self) -> _Connection:
        async with self._connecting:
            found = self._connection
            if found is not None and found.lost is None:
                return found  # another caller connected while this one waited
            async with asyncio.timeout(self._timeout):
                connection = await self._open()
                options = self._options
                password = options.get("password")
                if password:
                    username = options.get("username")
                    credentials = (username, password) if username else (password,)
                    await connection.call("AUTH", *credentials)
                if options.get("db"):
                    await connection.call("SELECT", options["db"])
            self._connection = connection
            return connection

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        options = self._options
        if "path" in options:
            _, made = await loop.create_unix_connection(_Connection, options["path"])
            return made
        tls: ssl.SSLContext | None = None
        if options.get("connection_class") is SSLConnection:
            tls = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
            if options.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
                tls.check_hostname = False
                tls.verify_mode = ssl.CERT_NONE
        host, port = options.get("host", "localhost"), options.get("port", 6379)
        _, made = await loop.create_connection(_Connection, host, port, ssl=tls)
        return made

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
