"""Gateway mode: the library's calls go to a central Runestone server.

With ``RUNESTONE_GATEWAY_MODE=true`` and ``RUNESTONE_URL``, ``route_chat`` and
``route_stream`` post to that server (with ``RUNESTONE_SERVICE_TOKEN`` as the bearer)
instead of calling providers, so an application moves from in-process routing to a
central gateway by environment alone. Errors come back as the same ``GatewayError``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping

import aiohttp
import orjson

from runestone.errors import CODES, GatewayError, error_for
from runestone.providers.errors import (
    TRANSPORT_ERRORS,
    map_transport_error,
    map_transport_errors,
    map_upstream_response,
)
from runestone.streams.sse import encode


def gateway_url(url: str) -> str:
    """Accept ``http://host:4001`` or ``http://host:4001/v1``; return the origin form."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


class RemoteBackend:
    def __init__(self, url: str, token: str | None, session: aiohttp.ClientSession) -> None:
        self.url = gateway_url(url) + "/v1/chat/completions"
        self._session = session
        self._headers = {"content-type": "application/json"}
        if token:
            self._headers["authorization"] = f"Bearer {token}"

    def __repr__(self) -> str:
        return f"<RemoteBackend {self.url}>"

    def _headers_for(self, request_id: str, key: str | None) -> dict[str, str]:
        headers = {**self._headers, "x-request-id": request_id}
        if key is not None:  # the client key's own limits, instead of the service token
            headers["authorization"] = f"Bearer {key}"
        return headers

    async def chat_bytes(
        self, body: dict[str, object], request_id: str, key: str | None = None
    ) -> bytes:
        with map_transport_errors("runestone"):
            async with self._session.post(
                self.url, data=orjson.dumps(body), headers=self._headers_for(request_id, key)
            ) as resp:
                data = await resp.read()
                status, headers = resp.status, resp.headers
        if status >= 400:
            raise error_from_envelope(data, status, headers)
        return data

    async def stream_bytes(
        self, body: dict[str, object], request_id: str, key: str | None = None
    ) -> AsyncGenerator[bytes, None]:
        with map_transport_errors("runestone"):
            resp = await self._session.post(
                self.url, data=orjson.dumps(body), headers=self._headers_for(request_id, key)
            )
        try:
            if resp.status >= 400:
                raise error_from_envelope(await resp.read(), resp.status, resp.headers)
            # The server already ends its streams honestly: relay what it sends.
            async for chunk in resp.content.iter_any():
                yield chunk
        except TRANSPORT_ERRORS as exc:
            yield encode(map_transport_error("runestone", exc, streaming=True).to_json(request_id))
        finally:
            resp.release()


def error_from_envelope(data: bytes, status: int, headers: Mapping[str, str]) -> GatewayError:
    """Rebuild the server's ``GatewayError`` from its envelope, keeping code and provider."""
    try:
        envelope = orjson.loads(data)
        error = envelope["error"]
        code = error["code"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return map_upstream_response("runestone", status, data, headers)
    if code not in CODES:
        return map_upstream_response("runestone", status, data, headers)
    retry_after = error.get("retry_after")
    return error_for(
        code,
        str(error.get("message", "")),
        provider=error.get("provider"),
        retry_after=float(retry_after) if isinstance(retry_after, int | float) else None,
        param=error.get("param"),
    )
