"""``route_chat`` and ``route_stream``: the gateway as two calls in a Python application.

In-process by default; with ``RUNESTONE_GATEWAY_MODE=true`` and ``RUNESTONE_URL`` the
same calls go to a central Runestone server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from runestone._library import default_backend
from runestone.protocols import validate_chat
from runestone.routing import new_request_id
from runestone.streams import one_event_each


async def route_chat(
    request: dict[str, object], *, request_id: str | None = None
) -> dict[str, object]:
    """Send one chat completion and return the provider's answer as a dict.

    Raises ``GatewayError`` (with ``code``, ``status`` and ``retryable``) on failure.

    >>> answer = await route_chat({"model": "mock:echo",
    ...                            "messages": [{"role": "user", "content": "hi"}]})
    >>> answer["choices"][0]["message"]["content"]
    'hi'
    """
    backend = await default_backend()
    body = validate_chat(dict(request))
    result: dict[str, object] = orjson.loads(
        await backend.chat_bytes(body, new_request_id(request_id))
    )
    return result


async def route_stream(
    request: dict[str, object], *, request_id: str | None = None
) -> AsyncIterator[bytes]:
    """Stream one chat completion, one SSE event per item, ending with ``[DONE]`` or an error.

    Failures before the stream starts raise ``GatewayError``; after that, the stream ends
    with ``data: {"error": ...}`` and no ``[DONE]``.

    >>> async for event in route_stream({"model": "mock:echo", "stream": True,
    ...                                  "messages": [{"role": "user", "content": "hi"}]}):
    ...     print(event)
    """
    backend = await default_backend()
    body = validate_chat({**request, "stream": True})
    async for event in one_event_each(backend.stream_bytes(body, new_request_id(request_id))):
        yield event
