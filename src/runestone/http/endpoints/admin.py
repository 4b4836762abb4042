"""``GET /admin/usage``: spend per key, team and model, for the operators' token.

``?key=ID`` for one key; else a page of keys in order of id: ``?limit=N`` (default 100,
at most 1000) and ``?after=ID`` (the ``next`` of the page before).
"""

from __future__ import annotations

from urllib.parse import parse_qs

import orjson

from runestone._gateway import Gateway
from runestone.access._report import MAX_PAGE, PAGE
from runestone.errors import error_for
from runestone.http._asgi import JSON, Receive, Scope, Send, send_json
from runestone.http.endpoints._admin_access import Refusals
from runestone.http.middleware.auth import OPERATOR, requires


class UsageEndpoint:
    def __init__(self, gateway: Gateway, refusals: Refusals) -> None:
        self.gateway = gateway
        self.refusals = refusals

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.refusals.check(scope)
        if OPERATOR not in scope["auth"].scopes:
            requires(scope, OPERATOR)
        table = self.gateway.aliases.table
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        only = query.get("key", [None])[0]
        if only is not None and table.access.by_id(only) is None:
            raise error_for("not_found", f"no key {only!r}", param="key")
        raw_limit = query.get("limit", [str(PAGE)])[0]
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_PAGE:
            raise error_for("invalid_request", f"limit must be from 1 to {MAX_PAGE}", param="limit")
        after = query.get("after", [None])[0]
        if not table.access.keys:
            body = {"keys": [], "teams": [], "note": "no keys: the alias file has no 'keys:'"}
        else:
            access = self.gateway.access
            body = await access.report(table, only, limit=int(raw_limit), after=after)
        await send_json(send, 200, orjson.dumps(body), [(b"content-type", JSON)])
