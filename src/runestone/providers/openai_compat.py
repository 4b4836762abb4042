"""OpenAI-format requests to OpenAI-compatible providers: a byte pass-through.

Only ``model`` is rewritten; every other field goes upstream as the client sent it, and
the upstream's body and SSE bytes come back as they arrive.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping

import orjson

from runestone.errors import GatewayError, error_for
from runestone.providers.adapter import Call, Reply
from runestone.providers.errors import map_upstream_response
from runestone.providers.wire import Answer, Wire

#: Enough of an error answer to classify it; the rest is never read.
ERROR_BODY_LIMIT = 64 * 1024
DEFAULT_BODY_LIMIT = 64 * 1024 * 1024


class SessionAdapter:
    """Shared by the pass-through adapters: POST over the process's upstream wire."""

    def __init__(self, wire: Wire, *, max_body: int = DEFAULT_BODY_LIMIT) -> None:
        self._wire = wire
        self._max_body = max_body

    def _prepare(self, call: Call) -> tuple[str, bytes, Mapping[str, str]]:
        """(path below the base URL, body, headers) for this call."""
        raise NotImplementedError

    def _send(self, call: Call) -> Awaitable[Answer]:
        path, data, headers = self._prepare(call)
        forward = call.forward
        if forward.headers:
            headers = {**headers, **forward.headers}
        return self._wire.post(call.endpoint, path, forward.query, data, headers)

    async def complete(self, call: Call) -> Reply:
        answer = await self._send(call)
        status = answer.status
        body, more = await answer.read(self._max_body if status < 400 else ERROR_BODY_LIMIT)
        if status >= 400:
            raise map_upstream_response(call.provider, status, body, answer.response_headers)
        if 300 <= status < 400:
            raise _redirected(call.provider, status)
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

    async def open_stream(self, call: Call) -> Answer:
        answer = await self._send(call)
        status = answer.status
        if status >= 300:
            body, _ = await answer.read(ERROR_BODY_LIMIT)  # the rest is never read
            if status < 400:
                raise _redirected(call.provider, status)
            raise map_upstream_response(call.provider, status, body, answer.response_headers)
        return answer


def _redirected(provider: str, status: int) -> GatewayError:
    return error_for(
        "upstream_invalid_response",
        f"{provider} answered with a redirect (HTTP {status}), which the gateway does not "
        "follow: check the provider's base URL",
        provider=provider,
        upstream_status=status,
    )


_OPENAI_PATHS = {
    "chat": "/chat/completions",
    "embeddings": "/embeddings",
    "responses": "/responses",
}


class OpenAICompatibleAdapter(SessionAdapter):
    def _prepare(self, call: Call) -> tuple[str, bytes, Mapping[str, str]]:
        body = call.target_body()
        if call.add_stream_usage:
            options = body.get("stream_options")
            extra = options if isinstance(options, dict) else {}
            body = {**body, "stream_options": {**extra, "include_usage": True}}
        return _OPENAI_PATHS[call.operation], orjson.dumps(body), call.endpoint.headers
