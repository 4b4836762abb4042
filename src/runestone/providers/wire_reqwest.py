"""The upstream transport on pyreqwest: reqwest and hyper in Rust, one client a process.

HTTP/2 where the provider offers it (ALPN), HTTP/1.1 otherwise; the connection pool,
TLS (rustls), decompression and the timeouts are Rust's, so no Python runs per byte.
Every answer is read as a stream with no read-ahead buffer: pyreqwest's default holds
back the head and the first 64 KB of a body, which would hold a whole SSE answer until
it ended.

hyper keeps one HTTP/2 connection per provider and queues the streams past the
server's concurrent-stream cap (often 100 to 256) on it rather than opening another:
1,000 streams to one provider would wait behind the first few hundred. So the wire
keeps up to ``MAX_CLIENTS`` clients, each with its own pool, and sends each request on
the one with the fewest in flight, adding a client only once every one has
``SPILL_AT`` in flight: at most 8 connections carry 1,000 concurrent streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator, Coroutine, Mapping
from datetime import timedelta
from typing import Any

from pyreqwest.client import Client, ClientBuilder
from pyreqwest.request import StreamRequest
from pyreqwest.response import Response

from runestone.errors import GatewayError
from runestone.providers._specs import Endpoint
from runestone.providers.errors import (
    TRANSPORT_ERRORS,
    map_transport_error,
    map_transport_errors,
)

_DRAIN_SECONDS = 1.0


#: Requests in flight on every client before another client (connection) is added.
SPILL_AT = 100
MAX_CLIENTS = 8


class _Client:
    __slots__ = ("client", "in_flight")

    def __init__(self, client: Client) -> None:
        self.client = client
        self.in_flight = 0


class ReqwestWire:
    __slots__ = ("_clients", "_closing", "_timeouts")

    def __init__(self, *, connect_timeout: float, read_timeout: float) -> None:
        self._timeouts = (connect_timeout, read_timeout)
        self._clients = [_Client(_build(*self._timeouts))]
        self._closing: set[asyncio.Task[None]] = set()

    def _least_busy(self) -> _Client:
        clients = self._clients
        best = clients[0]
        if best.in_flight:
            for other in clients:
                if other.in_flight < best.in_flight:
                    best = other
            if best.in_flight >= SPILL_AT and len(clients) < MAX_CLIENTS:
                best = _Client(_build(*self._timeouts))
                clients.append(best)
        return best

    async def post(
        self, endpoint: Endpoint, path: str, query: str, body: bytes, headers: Mapping[str, str]
    ) -> ReqwestAnswer:
        url = endpoint.base_url + path
        if query:
            url += "?" + query
        chosen = self._least_busy()
        request = (
            chosen.client.post(url)
            .headers(headers)
            .body_bytes(body)
            .streamed_read_buffer_limit(0)
            .build_streamed()
        )
        chosen.in_flight += 1
        try:
            with map_transport_errors(endpoint.spec.name):
                resp = await request.__aenter__()
        except BaseException:
            chosen.in_flight -= 1
            raise
        return ReqwestAnswer(self, chosen, request, resp, endpoint.spec.name)

    def _cut(self, request: StreamRequest) -> None:
        """Close an answer from synchronous code: its request's exit, on the loop."""
        self._later(request.__aexit__(None, None, None))

    def _later(self, closing: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(closing)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def close_now(self) -> None:
        with contextlib.suppress(RuntimeError):  # no running loop: nothing left to close
            for each in self._clients:
                self._later(each.client.close())

    async def aclose(self) -> None:
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        for each in self._clients:
            await each.client.close()


def _build(connect_timeout: float, read_timeout: float) -> Client:
    builder = (
        ClientBuilder()
        .http2(True)
        .follow_redirects(False)
        .connect_timeout(timedelta(seconds=connect_timeout))
        .read_timeout(timedelta(seconds=read_timeout))
        .pool_idle_timeout(timedelta(seconds=30))
    )
    # The system's roots, and a CA bundle named the OpenSSL way, every certificate of it
    # (reqwest reads one certificate from a PEM).
    bundle = os.environ.get("SSL_CERT_FILE")
    if bundle:
        with open(bundle, "rb") as pem:
            for certificate in _PEM_CERTIFICATE.findall(pem.read()):
                builder = builder.add_root_certificate_pem(certificate)
    return builder.build()


_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


class ReqwestAnswer:
    __slots__ = (
        "_client",
        "_done",
        "_provider",
        "_request",
        "_resp",
        "_wire",
        "response_headers",
        "status",
    )

    def __init__(
        self,
        wire: ReqwestWire,
        client: _Client,
        request: StreamRequest,
        resp: Response,
        provider: str,
    ) -> None:
        self._wire = wire
        self._client = client
        self._request = request
        self._resp = resp
        self._provider = provider
        self._done = False  # closed, or its body read to the end
        self.status = resp.status
        self.response_headers = resp.headers

    async def read(self, limit: int) -> tuple[bytes, bool]:
        try:
            with map_transport_errors(self._provider):
                data = await self._resp.body_reader.read(limit + 1)
        except BaseException:
            self.close()
            raise
        body = bytes(data) if data is not None else b""
        await self._exit()
        if len(body) > limit:
            return body[:limit], True
        return body, False

    async def chunks(self) -> AsyncIterator[bytes]:
        read = self._resp.body_reader.read_chunk
        while (piece := await read()) is not None:
            yield bytes(piece)

    def failure(self, exc: Exception) -> GatewayError | None:
        if isinstance(exc, TRANSPORT_ERRORS):
            return map_transport_error(self._provider, exc, streaming=True)
        return None

    def drop_read_timeout(self) -> None:
        """Let the relay bound this stream's silence (an alias's ``idle_timeout``).

        reqwest's own per-read timer costs Python nothing and stays, at the session's
        read timeout: the stricter of the two ends a silent stream.
        """

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._client.in_flight -= 1
            self._wire._cut(self._request)

    async def _exit(self) -> None:
        if not self._done:
            self._done = True
            self._client.in_flight -= 1
            await self._request.__aexit__(None, None, None)

    async def finish(self) -> None:
        read = self._resp.body_reader.read_chunk
        try:
            async with asyncio.timeout(_DRAIN_SECONDS):
                while await read() is not None:
                    pass
        except TRANSPORT_ERRORS:
            pass
        await self._exit()
