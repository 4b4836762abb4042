"""``route_chat`` and ``route_stream``: the gateway as two calls in a Python application.

In-process by default, through the same exchange as the server (a client key's limits,
budgets and accounting included); with ``RUNESTONE_GATEWAY_MODE=true`` and
``RUNESTONE_URL`` the same calls go to a central Runestone server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal, overload

import orjson

from runestone._library import default_backend
from runestone.errors import GatewayError
from runestone.protocols import validate_chat
from runestone.remote import error_from_envelope
from runestone.routing import new_request_id
from runestone.streams import event_data, one_event_each


async def route_chat(
    request: dict[str, object], *, key: str | None = None, request_id: str | None = None
) -> dict[str, object]:
    """Send one chat completion and return the provider's answer as a dict.

    ``key`` is a client key of the alias file: its models, limits and budgets apply and
    its spend is booked, as on the server. Raises ``GatewayError`` (with ``code``,
    ``status`` and ``retryable``) on failure.

    >>> answer = await route_chat({"model": "mock:echo",
    ...                            "messages": [{"role": "user", "content": "hi"}]})
    >>> answer["choices"][0]["message"]["content"]
    'hi'
    """
    backend = await default_backend()
    body = validate_chat(dict(request))
    result: dict[str, object] = orjson.loads(
        await backend.chat_bytes(body, new_request_id(request_id), key)
    )
    return result


@overload
def route_stream(
    request: dict[str, object],
    *,
    key: str | None = None,
    request_id: str | None = None,
    raw: Literal[False] = False,
) -> AsyncIterator[dict[str, Any]]: ...


@overload
def route_stream(
    request: dict[str, object],
    *,
    key: str | None = None,
    request_id: str | None = None,
    raw: Literal[True],
) -> AsyncIterator[bytes]: ...


async def route_stream(
    request: dict[str, object],
    *,
    key: str | None = None,
    request_id: str | None = None,
    raw: bool = False,
) -> AsyncIterator[Any]:
    """Stream one chat completion: its chunks, decoded (with ``raw=True``, each SSE event
    as bytes, ``data: [DONE]`` last).

    A failure raises ``GatewayError``, before the first chunk or mid-stream (as the OpenAI
    SDK does: an answer cut short is never a normal end). ``key`` as for ``route_chat``.

    >>> async for chunk in route_stream({"model": "mock:echo",
    ...                                  "messages": [{"role": "user", "content": "hi"}]}):
    ...     print(chunk["choices"][0]["delta"])
    """
    backend = await default_backend()
    body = validate_chat({**request, "stream": True})
    source = backend.stream_bytes(body, new_request_id(request_id), key)
    try:  # closed here, however the caller stops: the request is then counted and settled
        async for event in one_event_each(source):
            data = event_data(event)
            if data is None:
                continue  # a comment: a heartbeat, or a note of the gateway's
            if data == b"[DONE]":
                if raw:
                    yield event
                continue  # the source ends next: its accounting is done before we return
            chunk = orjson.loads(data) if not raw or b'"error"' in data else None
            if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
                raise _in_band(data)
            yield event if raw else chunk
    finally:
        await source.aclose()


def _in_band(data: bytes) -> GatewayError:
    """The error event that ended a stream, as the error it carries."""
    return error_from_envelope(data, 502, {})
