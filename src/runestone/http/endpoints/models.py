"""``GET /v1/models``: the aliases, the targets they name, and the mock's models."""

from __future__ import annotations

import orjson

from runestone._gateway import Gateway
from runestone.http._asgi import JSON, Receive, Scope, Send, send_json
from runestone.http.middleware.errors import REQUEST_ID
from runestone.providers.mock import MODELS as MOCK_MODELS


class ModelsEndpoint:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        router = self.gateway.router
        assert router is not None
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
        data = [
            {"id": model_id, "object": "model", "created": 0, "owned_by": owner}
            for model_id, owner in ids.items()
        ]
        body = orjson.dumps({"object": "list", "data": data})
        request_id: str = scope[REQUEST_ID]
        await send_json(
            send, 200, body, [(b"content-type", JSON), (b"x-request-id", request_id.encode())]
        )
