"""What the Responses API has besides ``POST /v1/responses``: the stored responses
(``GET`` and ``DELETE /v1/responses/{id}``, and ``GET /v1/responses/{id}/input_items``,
a page: ``limit`` 1..100, default 20; ``order`` ``desc`` (default) or ``asc``; ``after``
an item id), and the check that ``hosted_tools: refuse`` asks of a request.

Only the key that made a response sees it; to any other it does not exist (404).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import orjson

from runestone._gateway import Gateway
from runestone.access import StateError
from runestone.conversations import Stored
from runestone.errors import error_for
from runestone.exchange import Exchange
from runestone.http._asgi import JSON, Receive, Scope, Send, send_json
from runestone.http.middleware.auth import owner_of
from runestone.translate.responses_chat.tools import hosted_in

_INPUT_ITEMS = "/input_items"


class StoredResponsesEndpoint:
    def __init__(self, gateway: Gateway) -> None:
        self.conversations = gateway.conversations

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rest: str = scope["path_params"]["response_id"]
        listing = rest.endswith(_INPUT_ITEMS)
        response_id = rest[: -len(_INPUT_ITEMS)] if listing else rest
        if not response_id or "/" in response_id:
            raise error_for("not_found", f"no endpoint {scope['path']}")
        owner = owner_of(scope)
        store = self.conversations
        try:
            if scope["method"] == "DELETE" and not listing:
                if not await store.store.delete(response_id, owner):
                    raise _missing(response_id)
                body: object = {"id": response_id, "object": "response", "deleted": True}
            else:
                if scope["method"] == "DELETE":
                    raise error_for("method_not_allowed", f"{scope['path']} accepts GET only")
                found = await store.store.get(response_id, owner, store.clock())
                if found is None:
                    raise _missing(response_id)
                body = _page(found, scope) if listing else found.response
        except StateError as exc:
            raise error_for("state_unavailable", f"the response store: {exc}") from None
        await send_json(send, 200, orjson.dumps(body), [(b"content-type", JSON)])


def _missing(response_id: str) -> Exception:
    return error_for(
        "not_found", f"no stored response {response_id!r} for this key", param="response_id"
    )


def _page(found: Stored, scope: Scope) -> dict[str, Any]:
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    raw_limit = query.get("limit", ["20"])[0]
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 100:
        raise error_for("invalid_request", "limit must be from 1 to 100", param="limit")
    order = query.get("order", ["desc"])[0]
    if order not in ("asc", "desc"):
        raise error_for("invalid_request", "order must be asc or desc", param="order")
    items = found.input if order == "asc" else list(reversed(found.input))
    after = query.get("after", [None])[0]
    if after is not None:
        ids = [item.get("id") for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[: int(raw_limit)]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0].get("id") if page else None,
        "last_id": page[-1].get("id") if page else None,
        "has_more": len(items) > len(page),
    }


def refuse_dropped_tools(body: dict[str, object], gateway: Gateway, exchange: Exchange) -> None:
    """With ``hosted_tools: refuse`` (on the key or the alias), a request that offers a
    provider's hosted tools is refused if one of its targets could not run them, rather
    than answered without them."""
    hosted = hosted_in(body.get("tools"))
    if not hosted:
        return
    model, table, key = str(body["model"]), exchange.table, exchange.key
    alias = table.match(model)
    by = "key" if key is not None and key.hosted_tools == "refuse" else None
    if by is None and alias is not None and alias.hosted_tools == "refuse":
        by = f"alias {alias.name!r}"
    if by is None or gateway.router is None:
        return
    for target, endpoint in gateway.router.destinations(model, table):
        if not endpoint.spec.responses:
            raise error_for(
                "unsupported_parameter",
                f"'tools' of type {', '.join(hosted)} are run by the provider, and {target} "
                "cannot run them (the gateway bridges to its chat completions); the "
                f"{by} says hosted_tools: refuse, so the request is not sent without them",
                param="tools",
            )
