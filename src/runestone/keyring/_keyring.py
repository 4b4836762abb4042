"""The live keyring of one process: the API's keys and teams, kept in step with the
store, and merged into the alias table in use.

A change made here is in the table at once (before the API answers); a change made on
another replica is read within ``POLL_SECONDS`` by ``poll``, which the gateway runs.
Updates to one record are last-writer-wins; creating an id is first-writer-wins across
replicas (the store refuses a second record of the same name).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from runestone.access import StateError, digest, new_key
from runestone.aliases import AliasStore, AliasTable
from runestone.errors import error_for
from runestone.keyring._records import (
    MAX_PREVIOUS,
    Parsed,
    Record,
    check_key_settings,
    check_team_settings,
    merge,
)
from runestone.keyring._store import Changes, KeyringStore

log = logging.getLogger("runestone.keyring")

#: How often another replica's changes are looked for.
POLL_SECONDS = 0.25
#: The longest grace a rotation may leave the old secret working.
MAX_GRACE_SECONDS = 30 * 86400


class Keyring:
    """Keys and teams made by the API, for one process."""

    def __init__(self, open_store: Callable[[], KeyringStore], aliases: AliasStore) -> None:
        self._open = open_store
        self._store: KeyringStore | None = None
        self.aliases = aliases
        self.clock: Callable[[], float] = time.time
        self._keys: dict[str, Record] = {}
        self._teams: dict[str, Record] = {}
        self._parsed = Parsed()
        self._version = 0
        self.last_error: str | None = None

    def __repr__(self) -> str:
        return f"<Keyring keys={len(self._keys)} teams={len(self._teams)} v{self._version}>"

    @property
    def store(self) -> KeyringStore:
        if self._store is None:
            self._store = self._open()
        return self._store

    async def start(self) -> None:
        """Read every record, and merge them into the alias table from now on."""
        self.aliases.overlay(self._merge)
        await self.poll()

    def _merge(self, table: AliasTable) -> AliasTable:
        if not self._keys and not self._teams:
            return table
        return merge(table, self._keys, self._teams, self._parsed, self.clock())

    async def poll(self) -> None:
        """Read what other replicas changed, if anything (never raises)."""
        try:
            store = self.store
            if await store.version() == self._version:
                return
            self._apply(await store.changes(self._version))
        except (StateError, OSError) as exc:
            if self.last_error != str(exc):
                log.warning("keyring: cannot read the store: %s", exc)
            self.last_error = str(exc)
            return
        self.last_error = None

    def _apply(self, changes: Changes) -> None:
        if changes.complete:
            self._keys, self._teams = {}, {}
        for name, body in changes.records:
            self._take(name, orjson.loads(body))
        self._version = max(self._version, changes.version)
        self.aliases.overlay(self._merge)

    def _take(self, name: str, record: Record) -> None:
        kind, _, record_id = name.partition(":")
        (self._keys if kind == "key" else self._teams)[record_id] = record

    # --- reading -------------------------------------------------------------------------

    def key(self, key_id: str) -> Record | None:
        return self._keys.get(key_id)

    def team(self, team_id: str) -> Record | None:
        return self._teams.get(team_id)

    def key_records(self) -> list[Record]:
        return list(self._keys.values())

    def team_records(self) -> list[Record]:
        return list(self._teams.values())

    # --- changing ------------------------------------------------------------------------

    async def _put(self, name: str, record: Record, *, create: bool = False) -> None:
        try:
            version = await self.store.put(name, orjson.dumps(record), create=create)
        except StateError as exc:
            raise error_for("state_unavailable", f"the keyring cannot be written: {exc}") from None
        if version is None:
            raise error_for("conflict", f"{name.replace(':', ' ')!r} exists already")
        self._take(name, record)
        if version == self._version + 1:
            self._version = version  # else another replica's change is read by the poll
        self.aliases.overlay(self._merge)

    def _taken(self, kind: str, item_id: str) -> bool:
        access = self.aliases.file_table.access
        if kind == "key":
            return access.by_id(item_id) is not None or item_id in self._keys
        return item_id in access.teams or item_id in self._teams

    def _stamp(self, record: Record, actor: str) -> Record:
        record["revision"] = record.get("revision", 0) + 1
        record["updated_at"] = self.clock()
        record["updated_by"] = actor
        return record

    async def create_key(
        self, key_id: str, settings: dict[str, Any], metadata: dict[str, Any], actor: str
    ) -> tuple[Record, str]:
        """A new key; returns its record and its secret (shown this once)."""
        if self._taken("key", key_id) or key_id == "self":
            raise error_for("conflict", f"key {key_id!r} exists already (ids are unique)")
        spec = check_key_settings(key_id, settings, self.aliases.table.guards)
        self._check_team(spec.team)
        secret = new_key()
        now = self.clock()
        record = {
            "kind": "key",
            "id": key_id,
            "digest": digest(secret),
            "previous": [],
            "settings": settings,
            "metadata": metadata,
            "blocked": False,
            "revoked_at": None,
            "created_at": now,
            "created_by": actor,
        }
        await self._put(f"key:{key_id}", self._stamp(record, actor), create=True)
        return record, secret

    def _check_team(self, team_id: str | None) -> None:
        if team_id is not None and team_id not in self.aliases.table.access.teams:
            raise error_for("invalid_request", f"no team {team_id!r}", param="team")

    async def update_key(
        self,
        record: Record,
        settings: dict[str, Any] | None,
        metadata: dict[str, Any] | None,
        blocked: bool | None,
        actor: str,
    ) -> Record:
        if settings is not None:
            self._check_team(
                check_key_settings(record["id"], settings, self.aliases.table.guards).team
            )
        changed = _changed(record, settings, metadata, blocked)
        await self._put(f"key:{record['id']}", self._stamp(changed, actor))
        return changed

    async def rotate_key(self, record: Record, grace: float, actor: str) -> tuple[Record, str]:
        if not 0 <= grace <= MAX_GRACE_SECONDS:
            raise error_for(
                "invalid_request",
                f"grace_seconds must be from 0 to {MAX_GRACE_SECONDS}",
                param="grace_seconds",
            )
        now = self.clock()
        secret = new_key()
        previous = [p for p in record.get("previous", ()) if p["until"] > now]
        if grace > 0:
            previous.append({"digest": record["digest"], "until": now + grace})
        changed = dict(record, digest=digest(secret), previous=previous[-MAX_PREVIOUS:])
        changed["rotated_at"] = now
        await self._put(f"key:{record['id']}", self._stamp(changed, actor))
        return changed, secret

    async def revoke_key(self, record: Record, actor: str) -> Record:
        changed = dict(record, revoked_at=self.clock(), previous=[])
        await self._put(f"key:{record['id']}", self._stamp(changed, actor))
        return changed

    async def create_team(
        self, team_id: str, settings: dict[str, Any], metadata: dict[str, Any], actor: str
    ) -> Record:
        if self._taken("team", team_id):
            raise error_for("conflict", f"team {team_id!r} exists already (ids are unique)")
        check_team_settings(team_id, settings, self.aliases.table.guards)
        now = self.clock()
        record = {
            "kind": "team",
            "id": team_id,
            "settings": settings,
            "metadata": metadata,
            "blocked": False,
            "deleted_at": None,
            "created_at": now,
            "created_by": actor,
        }
        await self._put(f"team:{team_id}", self._stamp(record, actor), create=True)
        return record

    async def update_team(
        self,
        record: Record,
        settings: dict[str, Any] | None,
        metadata: dict[str, Any] | None,
        blocked: bool | None,
        actor: str,
    ) -> Record:
        if settings is not None:
            check_team_settings(record["id"], settings, self.aliases.table.guards)
        changed = _changed(record, settings, metadata, blocked)
        await self._put(f"team:{record['id']}", self._stamp(changed, actor))
        return changed

    async def delete_team(self, record: Record, actor: str) -> Record:
        members = sorted(
            k.id for k in self.aliases.table.access.keys.values() if k.team == record["id"]
        )
        if members:
            raise error_for(
                "conflict",
                f"team {record['id']!r} still has keys ({', '.join(members[:10])}): revoke or "
                "move them first",
            )
        changed = dict(record, deleted_at=self.clock())
        await self._put(f"team:{record['id']}", self._stamp(changed, actor))
        return changed

    # --- the audit log and alerts' claims -------------------------------------------------

    async def append_audit(self, entry: dict[str, Any]) -> None:
        await self.store.append_audit(orjson.dumps(entry))

    async def audit(
        self, before: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        try:
            found, following = await self.store.audit(before, limit)
        except StateError as exc:
            raise error_for("state_unavailable", f"cannot read the audit log: {exc}") from None
        return [orjson.loads(entry) | {"seq": seq} for seq, entry in found], following

    async def claim(self, name: str, seconds: float) -> bool:
        return await self.store.claim(name, seconds)

    async def aclose(self) -> None:
        if self._store is not None:
            await self._store.aclose()
            self._store = None


def _changed(
    record: Record,
    settings: dict[str, Any] | None,
    metadata: dict[str, Any] | None,
    blocked: bool | None,
) -> Record:
    """A copy of ``record`` with what an update gives (None: left as it was)."""
    given = {"settings": settings, "metadata": metadata, "blocked": blocked}
    return record | {name: value for name, value in given.items() if value is not None}
