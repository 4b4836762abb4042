"""``GET /admin/audit``: the audit log, newest first, for the operators.

Filters: ``actor`` (``token:admin``, ``key:<id>``), ``action`` (``key.create``, or a
prefix such as ``key.``), ``target`` (``key:<id>``), ``since`` (ISO time); ``limit``
(default 100, at most 1000) and ``before`` (the ``next`` of the page before). A filtered
read looks through at most ``MAX_SCANNED`` entries per page and says where it stopped.
"""

from __future__ import annotations

from typing import Any

from runestone._gateway import Gateway
from runestone.errors import error_for
from runestone.http._asgi import Receive, Scope, Send
from runestone.http.endpoints._admin_access import Refusals, operator_of
from runestone.http.endpoints.admin_keys import answer, page_size, query_of
from runestone.keyring import MAX_AUDIT_PAGE

MAX_SCANNED = 20_000


class AuditEndpoint:
    def __init__(self, gateway: Gateway, refusals: Refusals) -> None:
        self.keyring = gateway.keyring
        self.refusals = refusals

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.refusals.check(scope)
        operator_of(scope, "read the audit log")
        query = query_of(scope)
        limit = page_size(query)
        wanted = {name: query[name] for name in ("actor", "target") if name in query}
        action, since = query.get("action"), query.get("since")
        if since is not None and not (since[:4].isdigit() and len(since) >= 10):
            raise error_for("invalid_request", "since must be an ISO time", param="since")
        cursor = query.get("before")
        found: list[dict[str, Any]] = []
        scanned = 0
        while len(found) < limit and scanned < MAX_SCANNED:
            entries, cursor = await self.keyring.audit(cursor, MAX_AUDIT_PAGE)
            scanned += len(entries)
            for position, entry in enumerate(entries):
                if since is not None and entry["at"] < since:
                    cursor = None  # newest first: nothing older can match
                    break
                if all(entry.get(name) == value for name, value in wanted.items()) and (
                    action is None or entry["action"].startswith(action)
                ):
                    found.append(entry)
                    if len(found) == limit:
                        if position + 1 < len(entries):
                            cursor = entry["seq"]
                        break
            if cursor is None:
                break
        await answer(send, 200, {"entries": found, "next": cursor})
