"""Health: ``/health/live`` (the process answers) and ``/health/ready`` (it can route)."""

from __future__ import annotations

import orjson

from runestone._gateway import Gateway
from runestone.http._asgi import JSON, Receive, Scope, Send, send_json


async def live(scope: Scope, receive: Receive, send: Send) -> None:
    await send_json(send, 200, b'{"status":"ok"}', [(b"content-type", JSON)])


class ReadyEndpoint:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        aliases = self.gateway.aliases
        status = aliases.status
        loaded = bool(status.version) and not self.gateway.draining
        state = "draining" if self.gateway.draining else "ready" if loaded else "not_ready"
        body = orjson.dumps(
            {
                "status": state,
                "aliases": {"count": len(aliases.table), **status.as_dict()},
                "breakers": self.gateway.breaker_states(),
            }
        )
        await send_json(send, 200 if loaded else 503, body, [(b"content-type", JSON)])
