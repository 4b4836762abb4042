"""OpenAI-format requests to OpenAI-compatible providers: a byte pass-through.

Only ``model`` is rewritten; every other field goes upstream as the client sent it, and
the upstream's body and SSE bytes come back as they arrive.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import orjson
from yarl import URL

from runestone.errors import error_for
from runestone.providers.adapter import Call, Reply
from runestone.upstream_errors import (
    TRANSPORT_ERRORS,
    map_transport_error,
    map_upstream_response,
)


class OpenAICompatibleAdapter:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    def _request(self, call: Call) -> tuple[URL, bytes]:
        body = call.body
        if body.get("model") != call.model:
            body = {**body, "model": call.model}
        return call.endpoint.url("/chat/completions"), orjson.dumps(body)

    async def complete(self, call: Call) -> Reply:
        url, data = self._request(call)
        try:
            async with self._session.post(url, data=data, headers=call.endpoint.headers) as resp:
                body = await resp.read()
                status, headers = resp.status, resp.headers
        except TRANSPORT_ERRORS as exc:
            raise map_transport_error(call.provider, exc, streaming=False) from exc
        if status >= 400:
            raise map_upstream_response(call.provider, status, body, headers)
        if not body.lstrip()[:1] == b"{":
            raise error_for(
                "upstream_invalid_response",
                f"{call.provider} answered HTTP {status} with a body that is not a JSON object",
                provider=call.provider,
                upstream_status=status,
            )
        return Reply(body)

    async def open_stream(self, call: Call) -> AiohttpStream:
        url, data = self._request(call)
        try:
            resp = await self._session.post(url, data=data, headers=call.endpoint.headers)
            if resp.status >= 400:
                try:
                    body = await resp.read()
                finally:
                    resp.release()
                raise map_upstream_response(call.provider, resp.status, body, resp.headers)
        except TRANSPORT_ERRORS as exc:
            raise map_transport_error(call.provider, exc, streaming=False) from exc
        return AiohttpStream(resp)


_DRAIN_SECONDS = 1.0


class AiohttpStream:
    __slots__ = ("_resp",)

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp

    def chunks(self) -> AsyncIterator[bytes]:
        return self._resp.content.iter_any()  # no generator frame of ours per chunk

    def close(self) -> None:
        # A stream read to its end goes back to the keep-alive pool; any other is cut.
        if self._resp.content.at_eof():
            self._resp.release()
        else:
            self._resp.close()

    async def finish(self) -> None:
        # [DONE] usually arrives a write before the body's end; without reading that end,
        # every stream would cost a new upstream connection.
        content = self._resp.content
        try:
            async with asyncio.timeout(_DRAIN_SECONDS):
                while await content.readany():
                    pass
        except (*TRANSPORT_ERRORS, TimeoutError):
            self._resp.close()
            return
        self._resp.release()
