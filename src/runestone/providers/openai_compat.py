"""OpenAI-format requests to OpenAI-compatible providers: a byte pass-through.

Only ``model`` is rewritten; every other field goes upstream as the client sent it, and
the upstream's body and SSE bytes come back as they arrive.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from yarl import URL

from runestone.errors import GatewayError, error_for
from runestone.providers.adapter import Call, Reply
from runestone.providers.errors import (
    TRANSPORT_ERRORS,
    map_transport_error,
    map_transport_errors,
    map_upstream_response,
)

#: Enough of an error answer to classify it; the rest is never read.
ERROR_BODY_LIMIT = 64 * 1024
DEFAULT_BODY_LIMIT = 64 * 1024 * 1024


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """The body, decompressed, up to ``limit`` bytes; and whether there was more.

    Counting decompressed bytes as they arrive bounds a decompression bomb (a 1 MB gzip
    that inflates to 1 GB) as well as a plain huge answer.
    """
    declared = resp.content_length
    if declared is not None and declared <= limit and not resp.headers.get("content-encoding"):
        return await resp.read(), False  # the common case: small, plain, its size known
    parts = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > limit:
            parts.append(chunk[: len(chunk) - (size - limit)])
            return b"".join(parts), True
        parts.append(chunk)
    return b"".join(parts), False


class SessionAdapter:
    """Shared by the pass-through adapters: POST over the process's aiohttp session."""

    def __init__(
        self, session: aiohttp.ClientSession, *, max_body: int = DEFAULT_BODY_LIMIT
    ) -> None:
        self._session = session
        self._max_body = max_body

    def _prepare(self, call: Call) -> tuple[str, bytes, Any]:
        """(path below the base URL, body, headers) for this call."""
        raise NotImplementedError

    def _send(self, call: Call, path: str, data: bytes, headers: Any) -> Any:
        forward = call.forward
        if forward.query:  # never cached: the query string is the client's to choose
            url = URL(call.endpoint.base_url + path + "?" + forward.query, encoded=True)
        else:
            url = call.endpoint.url(path)
        if forward.headers:
            headers = {**headers, **forward.headers}
        # Redirects are never followed: a provider that redirects is misconfigured, and a
        # redirect could point the gateway at anything (itself included).
        # The session's timeouts (a stream's own silence is the relay's to bound).
        return self._session.post(url, data=data, headers=headers, allow_redirects=False)

    async def complete(self, call: Call) -> Reply:
        path, data, headers = self._prepare(call)
        with map_transport_errors(call.provider):
            async with self._send(call, path, data, headers) as resp:
                status, response_headers = resp.status, resp.headers
                limit = self._max_body if status < 400 else ERROR_BODY_LIMIT
                body, more = await read_capped(resp, limit)
        if status >= 400:
            raise map_upstream_response(call.provider, status, body, response_headers)
        if 300 <= status < 400:
            raise error_for(
                "upstream_invalid_response",
                f"{call.provider} answered with a redirect (HTTP {status}), which the gateway "
                "does not follow: check the provider's base URL",
                provider=call.provider,
                upstream_status=status,
            )
        if more:
            raise error_for(
                "upstream_invalid_response",
                f"{call.provider} answered with more than {self._max_body} bytes "
                "(RUNESTONE_MAX_UPSTREAM_BODY_BYTES)",
                provider=call.provider,
                upstream_status=status,
            )
        if not body.lstrip()[:1] == b"{":
            raise error_for(
                "upstream_invalid_response",
                f"{call.provider} answered HTTP {status} with a body that is not a JSON object",
                provider=call.provider,
                upstream_status=status,
            )
        return Reply(body)

    async def open_stream(self, call: Call) -> AiohttpStream:
        path, data, headers = self._prepare(call)
        with map_transport_errors(call.provider):
            resp = await self._send(call, path, data, headers)
            if resp.status >= 300:
                try:
                    body, _ = await read_capped(resp, ERROR_BODY_LIMIT)
                finally:
                    resp.close()  # the rest of an error answer is never read
                if resp.status < 400:
                    raise error_for(
                        "upstream_invalid_response",
                        f"{call.provider} answered with a redirect (HTTP {resp.status}), which "
                        "the gateway does not follow: check the provider's base URL",
                        provider=call.provider,
                        upstream_status=resp.status,
                    )
                raise map_upstream_response(call.provider, resp.status, body, resp.headers)
        return AiohttpStream(resp, call.provider)


_OPENAI_PATHS = {
    "chat": "/chat/completions",
    "embeddings": "/embeddings",
    "responses": "/responses",
}


class OpenAICompatibleAdapter(SessionAdapter):
    def _prepare(self, call: Call) -> tuple[str, bytes, Any]:
        body = call.target_body()
        if call.add_stream_usage:
            options = body.get("stream_options")
            extra = options if isinstance(options, dict) else {}
            body = {**body, "stream_options": {**extra, "include_usage": True}}
        return _OPENAI_PATHS[call.operation], orjson.dumps(body), call.endpoint.headers


_DRAIN_SECONDS = 1.0


class AiohttpStream:
    __slots__ = ("_provider", "_resp")

    def __init__(self, resp: aiohttp.ClientResponse, provider: str) -> None:
        self._resp = resp
        self._provider = provider

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
        # A stream read to its end goes back to the keep-alive pool; any other is cut.
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
        except (*TRANSPORT_ERRORS, TimeoutError) as exc:
            exc.__traceback__ = None  # see relay_stream: aiohttp reuses the instance
            self._resp.close()
            return
        self._resp.release()
