"""``DELETE /admin/cache``: forget cached answers, for the operators.

``?key=ID`` (the answers cached for a client key), ``?team=ID``, ``?alias=NAME`` (of an
alias), both of a scope and an alias, or ``?all=true``; answers how many were dropped.
"""

from __future__ import annotations

from runestone._gateway import Gateway
from runestone.access import StateError
from runestone.errors import error_for
from runestone.http._asgi import Receive, Scope, Send
from runestone.http.endpoints._admin_access import Refusals, audited, operator_of
from runestone.http.endpoints.admin_keys import answer, query_of


class CacheEndpoint:
    def __init__(self, gateway: Gateway, refusals: Refusals) -> None:
        self.gateway = gateway
        self.refusals = refusals

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.refusals.check(scope)
        operator_of(scope, "purge the response cache")
        query = query_of(scope)
        owner = None
        if "key" in query:
            owner = f"key:{query['key']}"
        elif "team" in query:
            owner = f"team:{query['team']}"
        elif query.get("scope") == "global":
            owner = "global"
        alias = query.get("alias")
        if owner is None and alias is None and query.get("all") != "true":
            raise error_for(
                "invalid_request", "say what to purge: ?key=ID, ?team=ID, ?alias=NAME or ?all=true"
            )
        try:
            dropped = await self.gateway.cache.purge(owner, alias)
        except StateError as exc:
            raise error_for("state_unavailable", f"cannot purge the cache: {exc}") from None
        what = {"scope": owner, "alias": alias, "dropped": dropped}
        await audited(self.gateway.keyring, scope, "cache.purge", "cache", what)
        await answer(send, 200, {"dropped": dropped})
