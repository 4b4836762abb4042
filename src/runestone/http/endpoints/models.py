"""``GET /v1/models`` and ``GET /v1/models/{model_id}``, in the client's format.

The list holds the aliases, the targets they name whose provider is configured, and the
mock's models; for a client key with a ``models`` list, only those it may use. A
client that sends ``anthropic-version`` (the Anthropic SDKs, Claude
Code) gets Anthropic's shapes (``type``, ``display_name``, ``created_at``, a page with
``has_more``, ``first_id``, ``last_id``); every other client gets OpenAI's.
"""

from __future__ import annotations

import orjson

from runestone._gateway import Gateway
from runestone.errors import GatewayError, error_for
from runestone.http._asgi import JSON, Receive, Scope, Send, send_json
from runestone.http.middleware.errors import PROTOCOL, REQUEST_ID
from runestone.protocols import MESSAGES
from runestone.providers.mock import MODELS as MOCK_MODELS
from runestone.routing import Router
from runestone.routing.resolve import resolve, unusable

_EPOCH = "1970-01-01T00:00:00Z"  # the gateway does not know when a model was released


def _openai(model_id: str, owner: str) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": owner}


def _anthropic(model_id: str, owner: str) -> dict[str, object]:
    return {"type": "model", "id": model_id, "display_name": model_id, "created_at": _EPOCH}


class ModelsEndpoint:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        router = self.gateway.router
        assert router is not None
        anthropic = any(name == b"anthropic-version" for name, _ in scope["headers"])
        if anthropic:
            scope[PROTOCOL] = MESSAGES  # errors in Anthropic's shape too
        shape = _anthropic if anthropic else _openai
        wanted = scope.get("path_params", {}).get("model_id")
        key = scope["auth"].key if "auth" in scope else None
        allowed = key.allows if key is not None and key.models else None
        if wanted is not None:
            if key is not None and allowed is not None and not allowed(wanted):
                raise error_for(
                    "model_not_allowed", f"key {key.id!r} may not use {wanted!r}", param="model"
                )
            owner = self._owner(router, wanted)
            body = orjson.dumps(shape(wanted, owner))
        else:
            listed = self._listed(router).items()
            data = [
                shape(model_id, owner)
                for model_id, owner in listed
                if allowed is None or allowed(model_id)
            ]
            if anthropic:
                page = {
                    "data": data,
                    "has_more": False,
                    "first_id": data[0]["id"] if data else None,
                    "last_id": data[-1]["id"] if data else None,
                }
                body = orjson.dumps(page)
            else:
                body = orjson.dumps({"object": "list", "data": data})
        request_id: str = scope[REQUEST_ID]
        await send_json(
            send, 200, body, [(b"content-type", JSON), (b"x-request-id", request_id.encode())]
        )

    def _listed(self, router: Router) -> dict[str, str]:
        table = self.gateway.aliases.table
        registry = router.registry(table)
        ids: dict[str, str] = {name: "runestone" for name in table.aliases}
        for alias in table.aliases.values():
            for target in alias.targets:
                endpoint = registry.endpoint(target.provider)
                if endpoint is not None and endpoint.configured:
                    ids.setdefault(str(target), target.provider)
        for model in MOCK_MODELS:
            ids.setdefault(f"mock:{model}", "mock")
        return ids

    def _owner(self, router: Router, model_id: str) -> str:
        """Who serves ``model_id``: listed, or any name the router can route."""
        listed = self._listed(router).get(model_id)
        if listed is not None:
            return listed
        table = self.gateway.aliases.table
        registry = router.registry(table)
        try:
            targets = resolve(model_id, table)
        except GatewayError as exc:
            raise error_for("model_not_found", exc.message, param="model") from None
        for target in targets:
            if unusable(target, registry.endpoint(target.provider), registry) is None:
                return "runestone" if table.match(model_id) else target.provider
        raise error_for(
            "model_not_found",
            f"no configured provider serves {model_id!r}",
            param="model",
        )
