"""Health: ``/health/live`` (the process answers) and ``/health/ready`` (it can route)."""

from __future__ import annotations

import orjson

from runestone._gateway import Gateway
from runestone.http._asgi import JSON, Receive, Scope, Send, send_json
from runestone.http.middleware.auth import OPERATOR


async def live(scope: Scope, receive: Receive, send: Send) -> None:
    await send_json(send, 200, b'{"status":"ok"}', [(b"content-type", JSON)])


class ReadyEndpoint:
    """Ready or not, for anyone (load balancers, orchestrators); the alias table's status
    and every breaker (targets, base URLs) only for the operators' token."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        aliases = self.gateway.aliases
        status = aliases.status
        loaded = bool(status.version) and not self.gateway.draining
        state = "draining" if self.gateway.draining else "ready" if loaded else "not_ready"
        principal = scope.get("auth")
        # The limits' store: its outage refuses budgeted keys (or not, as configured),
        # but taking this replica out of rotation would not help: all share the store.
        access = self.gateway.access
        store: dict[str, object] | None = None
        store_error: str | None = None
        if access.in_use:
            store_error = await access.check_store()
            store = {"name": access.store_name, "ok": store_error is None}
        if principal is not None and OPERATOR in principal.scopes:
            details: dict[str, object] = {
                "status": state,
                "aliases": {"count": len(aliases.table), **status.as_dict()},
                "breakers": self.gateway.breaker_states(),
            }
            if store is not None:
                details["limits_store"] = {**store, "error": store_error}
            body = orjson.dumps(details)
        else:
            public: dict[str, object] = {
                "status": state,
                "aliases": {"version": status.version, "ok": status.ok},
            }
            if store is not None:
                public["limits_store"] = store
            body = orjson.dumps(public)
        await send_json(send, 200 if loaded else 503, body, [(b"content-type", JSON)])
