"""``/admin/keys``: client keys made, read, changed, rotated and revoked at runtime.

::

    POST   /admin/keys                 {"id": ..., settings..., "metadata": {...}}
    GET    /admin/keys                 ?team=&limit=&after=&include_revoked=true
    GET    /admin/keys/{id}            (``self``: the calling key)
    PATCH  /admin/keys/{id}            settings (null removes one), metadata, blocked
    DELETE /admin/keys/{id}            revokes it, on every replica
    POST   /admin/keys/{id}/rotate     {"grace_seconds": 3600}: a new secret
    GET    /admin/keys/{id}/usage      its limits and spend (``self/usage`` too)

Settings are the alias file's (``rpm``, ``budgets``, ``models``, ``team``, ...). The
answer to a create or a rotation carries the secret, once; only its digest is stored.
Keys of the alias file are listed and read here, but only the file changes them.
"""

from __future__ import annotations

from urllib.parse import parse_qs

import orjson

from runestone._gateway import Gateway
from runestone.aliases import KeySpec
from runestone.aliases._access_section import KEY_SETTINGS
from runestone.errors import error_for
from runestone.http._asgi import JSON, Receive, Scope, Send, send_json
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
    key_view,
    new_id,
    patched,
    split_body,
)
from runestone.keyring import Record
from runestone.keyring._records import check_key_settings

DEFAULT_GRACE_SECONDS = 3600.0
_PAGE, _MAX_PAGE = 100, 1000


async def answer(send: Send, status: int, body: object) -> None:
    await send_json(send, status, orjson.dumps(body), [(b"content-type", JSON)])


def query_of(scope: Scope) -> dict[str, str]:
    found = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return {name: values[0] for name, values in found.items()}


def page_size(query: dict[str, str]) -> int:
    raw = query.get("limit", str(_PAGE))
    if not raw.isdigit() or not 1 <= int(raw) <= _MAX_PAGE:
        raise error_for("invalid_request", f"limit must be from 1 to {_MAX_PAGE}", param="limit")
    return int(raw)


class KeysEndpoint:
    def __init__(self, gateway: Gateway, refusals: Refusals) -> None:
        self.gateway = gateway
        self.keyring = gateway.keyring
        self.refusals = refusals

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.refusals.check(scope)
        caller = caller_of(scope)
        await self.keyring.poll()  # another replica's latest changes first
        method = scope["method"]
        rest = scope.get("path_params", {}).get("rest")
        if rest is None:
            if method == "POST":
                return await self._create(caller, scope, receive, send)
            if method in ("GET", "HEAD"):
                return await self._list(caller, scope, send)
            raise error_for("method_not_allowed", "/admin/keys accepts GET and POST")
        key_id, _, action = rest.partition("/")
        if key_id == "self":
            if caller.key_id is None:
                raise error_for("not_found", "'self' is the calling key: this token is no key")
            key_id = caller.key_id
        record, spec = self._find(key_id)
        team = spec.team if spec is not None else record["settings"].get("team")  # type: ignore[index]
        if not caller.may_read_key(key_id, team):
            raise forbidden(caller, f"read key {key_id!r}")
        match (method, action):
            case ("GET" | "HEAD", ""):
                await answer(send, 200, key_view(record, spec, self.keyring.clock()))
            case ("GET" | "HEAD", "usage"):
                table = self.gateway.aliases.table
                await answer(send, 200, await self.gateway.access.report(table, key_id))
            case ("PATCH", ""):
                await self._update(
                    caller, self._changeable(caller, record, team), scope, receive, send
                )
            case ("DELETE", ""):
                changed = self._changeable(caller, record, team)
                revoked = await self.keyring.revoke_key(changed, caller.actor)
                await audited(self.keyring, scope, "key.revoke", f"key:{key_id}", {})
                await answer(send, 200, key_view(revoked, None, self.keyring.clock()))
            case ("POST", "rotate"):
                await self._rotate(
                    caller, self._changeable(caller, record, team), scope, receive, send
                )
            case _:
                raise error_for("not_found", f"no admin endpoint {method} /admin/keys/{rest}")

    def _find(self, key_id: str) -> tuple[Record | None, KeySpec | None]:
        spec = self.gateway.aliases.file_table.access.by_id(key_id)
        if spec is not None:
            return None, spec
        record = self.keyring.key(key_id)
        if record is None:
            raise error_for("not_found", f"no key {key_id!r}")
        return record, None

    def _changeable(self, caller: Caller, record: Record | None, team: str | None) -> Record:
        if not caller.may_manage_key(team):
            raise forbidden(caller, "change this key")
        if record is None:
            raise error_for(
                "conflict", "this key is declared in the alias file: change it there (GitOps)"
            )
        if record.get("revoked_at"):
            raise error_for("conflict", f"key {record['id']!r} is revoked")
        return record

    async def _list(self, caller: Caller, scope: Scope, send: Send) -> None:
        if not caller.operator and caller.team is None:
            raise forbidden(caller, "list keys (a key may read itself: /admin/keys/self)")
        query = query_of(scope)
        limit = page_size(query)
        team = caller.team or query.get("team")
        after = query.get("after")
        with_revoked = query.get("include_revoked") == "true"
        now = self.keyring.clock()
        views = [
            key_view(None, spec, now)
            for spec in self.gateway.aliases.file_table.access.keys.values()
        ]
        views += [key_view(record, None, now) for record in self.keyring.key_records()]
        views = sorted(
            (
                v
                for v in views
                if (team is None or v["team"] == team)
                and (with_revoked or not v["revoked"])
                and (after is None or v["id"] > after)
            ),
            key=lambda v: v["id"],
        )
        page = views[:limit]
        following = page[-1]["id"] if len(views) > limit else None
        await answer(send, 200, {"keys": page, "next": following})

    def _within_team(self, caller: Caller, spec: KeySpec) -> None:
        """A team admin's key: in the team, a client, and no limit above the team's."""
        if caller.operator:
            return
        if spec.team != caller.team:
            raise forbidden(caller, f"manage keys outside team {caller.team!r}")
        if spec.role != "client":
            raise forbidden(caller, f"give a key the role {spec.role!r}")
        team = self.gateway.aliases.table.access.teams.get(caller.team or "")
        if team is None:
            return
        for name in ("rpm", "tpm", "max_parallel"):
            mine, theirs = getattr(spec.limits, name), getattr(team.limits, name)
            if mine is not None and theirs is not None and mine > theirs:
                raise forbidden(caller, f"set {name} {mine} above the team's {theirs}")
        for budget in spec.limits.budgets:
            for limit in team.limits.budgets:
                if limit.name == budget.name and budget.usd > limit.usd:
                    raise forbidden(
                        caller, f"set a budget of ${budget.usd:g} above the team's ${limit.usd:g}"
                    )

    async def _create(self, caller: Caller, scope: Scope, receive: Receive, send: Send) -> None:
        if not caller.operator and caller.team is None:
            raise forbidden(caller, "create keys")
        body = await json_body(receive)
        key_id = new_id(body)
        if caller.team is not None:
            body.setdefault("team", caller.team)
        settings, metadata, _ = split_body(body, KEY_SETTINGS)
        self._within_team(caller, check_key_settings(key_id, settings))
        record, secret = await self.keyring.create_key(
            key_id, settings, metadata or {}, caller.actor
        )
        await audited(
            self.keyring,
            scope,
            "key.create",
            f"key:{key_id}",
            {"settings": settings, "metadata": metadata or {}},
        )
        view = key_view(record, None, self.keyring.clock())
        await answer(send, 201, view | {"secret": secret})

    async def _update(
        self, caller: Caller, record: Record, scope: Scope, receive: Receive, send: Send
    ) -> None:
        changes, metadata, blocked = split_body(await json_body(receive), KEY_SETTINGS)
        settings = patched(record["settings"], changes) if changes else None
        if settings is not None:
            if not caller.operator and settings.get("team") != caller.team:
                raise forbidden(caller, "move a key to another team")
            self._within_team(caller, check_key_settings(record["id"], settings))
        changed = await self.keyring.update_key(record, settings, metadata, blocked, caller.actor)
        action, what = change_of("key", changes, metadata, blocked)
        await audited(self.keyring, scope, action, f"key:{record['id']}", what)
        await answer(send, 200, key_view(changed, None, self.keyring.clock()))

    async def _rotate(
        self, caller: Caller, record: Record, scope: Scope, receive: Receive, send: Send
    ) -> None:
        body = await json_body(receive) if _has_body(scope) else {}
        grace = body.get("grace_seconds", DEFAULT_GRACE_SECONDS)
        if isinstance(grace, bool) or not isinstance(grace, int | float):
            raise error_for(
                "invalid_request", "grace_seconds must be a number", param="grace_seconds"
            )
        changed, secret = await self.keyring.rotate_key(record, float(grace), caller.actor)
        await audited(
            self.keyring, scope, "key.rotate", f"key:{record['id']}", {"grace_seconds": grace}
        )
        await answer(send, 200, key_view(changed, None, self.keyring.clock()) | {"secret": secret})


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False
