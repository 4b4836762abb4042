"""``/admin/teams``: teams made, read, changed, blocked and deleted at runtime.

::

    POST   /admin/teams                {"id": ..., limits..., "metadata": {...}}
    GET    /admin/teams                ?limit=&after=
    GET    /admin/teams/{id}
    PATCH  /admin/teams/{id}           limits (null removes one), metadata, blocked
    DELETE /admin/teams/{id}           only once it has no keys

A blocked team blocks every key in it. Operators only, but a team admin may read its
own team.
"""

from __future__ import annotations

from runestone._gateway import Gateway
from runestone.aliases import TeamSpec
from runestone.aliases._access_section import TEAM_SETTINGS
from runestone.errors import error_for
from runestone.http._asgi import Receive, Scope, Send
from runestone.http.endpoints._admin_access import (
    Caller,
    Refusals,
    audited,
    caller_of,
    forbidden,
    json_body,
)
from runestone.http.endpoints._admin_views import (
    change_of,
    new_id,
    patched,
    split_body,
    team_view,
)
from runestone.http.endpoints.admin_keys import answer, page_size, query_of
from runestone.keyring import Record


class TeamsEndpoint:
    def __init__(self, gateway: Gateway, refusals: Refusals) -> None:
        self.gateway = gateway
        self.keyring = gateway.keyring
        self.refusals = refusals

    def _members(self, team_id: str) -> int:
        keys = self.gateway.aliases.table.access.keys.values()
        return len({k.id for k in keys if k.team == team_id})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.refusals.check(scope)
        caller = caller_of(scope)
        await self.keyring.poll()  # another replica's latest changes first
        method = scope["method"]
        team_id = scope.get("path_params", {}).get("rest")
        if team_id is None:
            if not caller.operator:
                raise forbidden(caller, "list or create teams")
            if method == "POST":
                return await self._create(caller, scope, receive, send)
            if method in ("GET", "HEAD"):
                return await self._list(scope, send)
            raise error_for("method_not_allowed", "/admin/teams accepts GET and POST")
        record, spec = self._find(team_id)
        if not caller.operator and not (method in ("GET", "HEAD") and caller.team == team_id):
            raise forbidden(caller, f"{'read' if method == 'GET' else 'change'} team {team_id!r}")
        if method in ("GET", "HEAD"):
            return await answer(send, 200, team_view(record, spec, self._members(team_id)))
        if record is None:
            raise error_for("conflict", "this team is declared in the alias file: change it there")
        if record.get("deleted_at"):
            raise error_for("conflict", f"team {team_id!r} is deleted")
        if method == "PATCH":
            return await self._update(caller, record, scope, receive, send)
        if method == "DELETE":
            deleted = await self.keyring.delete_team(record, caller.actor)
            await audited(self.keyring, scope, "team.delete", f"team:{team_id}", {})
            return await answer(send, 200, team_view(deleted, None, 0))
        raise error_for("method_not_allowed", "/admin/teams/{id} accepts GET, PATCH and DELETE")

    def _find(self, team_id: str) -> tuple[Record | None, TeamSpec | None]:
        spec = self.gateway.aliases.file_table.access.teams.get(team_id)
        if spec is not None:
            return None, spec
        record = self.keyring.team(team_id)
        if record is None:
            raise error_for("not_found", f"no team {team_id!r}")
        return record, None

    async def _list(self, scope: Scope, send: Send) -> None:
        query = query_of(scope)
        limit = page_size(query)
        after = query.get("after")
        views = [
            team_view(None, spec, self._members(spec.id))
            for spec in self.gateway.aliases.file_table.access.teams.values()
        ]
        views += [
            team_view(record, None, self._members(record["id"]))
            for record in self.keyring.team_records()
            if not record.get("deleted_at")
        ]
        views = sorted(
            (v for v in views if after is None or v["id"] > after), key=lambda v: v["id"]
        )
        page = views[:limit]
        await answer(
            send, 200, {"teams": page, "next": page[-1]["id"] if len(views) > limit else None}
        )

    async def _create(self, caller: Caller, scope: Scope, receive: Receive, send: Send) -> None:
        body = await json_body(receive)
        team_id = new_id(body)
        settings, metadata, _ = split_body(body, TEAM_SETTINGS)
        record = await self.keyring.create_team(team_id, settings, metadata or {}, caller.actor)
        await audited(
            self.keyring,
            scope,
            "team.create",
            f"team:{team_id}",
            {"settings": settings, "metadata": metadata or {}},
        )
        await answer(send, 201, team_view(record, None, 0))

    async def _update(
        self, caller: Caller, record: Record, scope: Scope, receive: Receive, send: Send
    ) -> None:
        changes, metadata, blocked = split_body(await json_body(receive), TEAM_SETTINGS)
        settings = patched(record["settings"], changes) if changes else None
        changed = await self.keyring.update_team(record, settings, metadata, blocked, caller.actor)
        action, what = change_of("team", changes, metadata, blocked)
        await audited(self.keyring, scope, action, f"team:{record['id']}", what)
        await answer(send, 200, team_view(changed, None, self._members(record["id"])))
