"""ASGI types and small helpers: read a bounded body, send JSON, send an error envelope."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from runestone.errors import GatewayError, error_for

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON = b"application/json"


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


async def read_body(receive: Receive, limit: int, declared: int | None) -> bytes:
    if declared is not None and declared > limit:
        raise _too_large(limit)
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise _too_large(limit)
        return body
    parts = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def _too_large(limit: int) -> GatewayError:
    return error_for(
        "request_too_large",
        f"the request body is larger than the gateway's limit of {limit} bytes "
        "(RUNESTONE_MAX_BODY_BYTES)",
    )


def parse_json(body: bytes) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if not body.strip():
            raise error_for(
                "invalid_json", "the request body is empty; send a JSON object"
            ) from None
        raise error_for(
            "invalid_json", f"the request body is not valid JSON: {exc.msg} at byte {exc.pos}"
        ) from None


async def send_json(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def header_value(value: str) -> bytes:
    """Header bytes for a string that may hold non-ASCII (a model name, say)."""
    return value.encode("ascii", "backslashreplace")


def error_headers(exc: GatewayError, request_id: bytes) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"content-type", JSON),
        (b"x-request-id", request_id),
        # OpenAI and Anthropic SDKs obey this over their own status-based retry rules.
        (b"x-should-retry", b"true" if exc.retryable else b"false"),
    ]
    if exc.retry_after is not None:
        headers.append((b"retry-after", str(math.ceil(exc.retry_after)).encode()))
    if exc.target is not None:  # an error that had a target says which, and how many tries
        headers.append((b"x-runestone-target", header_value(exc.target)))
        headers.append((b"x-runestone-attempts", str(exc.attempts).encode()))
    elif exc.attempts:
        headers.append((b"x-runestone-attempts", str(exc.attempts).encode()))
    headers += exc.headers
    return headers


async def send_error(
    send: Send,
    exc: GatewayError,
    request_id: str,
    render: Callable[[GatewayError, str | None], bytes] | None = None,
) -> None:
    """The envelope in the route's protocol (``render``), else the gateway's own."""
    body = exc.to_json(request_id) if render is None else render(exc, request_id)
    await send_json(send, exc.status, body, error_headers(exc, request_id.encode()))
