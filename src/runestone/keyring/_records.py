"""The API's keys and teams as records: checked, turned into the alias file's types, and
merged with the file's own.

A record is the JSON the store keeps: a key's id, the digest of its secret (never the
secret), the digests a rotation left working for a while, its settings in the alias
file's own vocabulary (so one parser checks both), metadata, and who made and last
changed it. A revoked key or a deleted team stays, marked, so that its id is never
handed out again and every replica learns of the revocation as of any other change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from runestone.aliases import AccessTable, AliasTable, KeySpec, Limits, Problem, TeamSpec
from runestone.aliases._access_section import (
    KEY_SETTINGS,
    TEAM_SETTINGS,
    key_entry,
    team_entry,
)
from runestone.aliases._yaml_nodes import Located
from runestone.errors import error_for

Record = dict[str, Any]
#: The most old secrets a key keeps working through their grace periods.
MAX_PREVIOUS = 4


def located(value: object) -> Located:
    """JSON as the parser's located values (all on line 0: the API has no lines)."""
    if isinstance(value, dict):
        return Located({str(k): located(v) for k, v in value.items()}, 0)
    if isinstance(value, list):
        return Located([located(v) for v in value], 0)
    return Located(value, 0)


class _EveryTeam(Mapping[str, TeamSpec]):
    """Teams as the parser sees them when a record is read: whether its team exists is
    decided at merge time, where a missing or blocked team blocks the key."""

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str)

    def __getitem__(self, name: str) -> TeamSpec:
        return TeamSpec(name, Limits())

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


_EVERY_TEAM = _EveryTeam()


def _refuse(problems: list[Problem]) -> None:
    raise error_for("invalid_request", "; ".join(p.message for p in problems))


def check_key_settings(
    key_id: str, settings: Mapping[str, Any], guards: Collection[str] | None = None
) -> KeySpec:
    """A key's settings as the API was sent them, checked like the alias file's (and
    its guards against ``guards``, the ones declared, when given)."""
    problems: list[Problem] = []
    where = f"key {key_id!r}"
    _known_guards(settings, guards, where, problems)
    unknown = sorted(set(settings) - KEY_SETTINGS)
    if unknown:
        known = ", ".join(sorted(KEY_SETTINGS))
        problems.append(Problem(0, f"{where}: unknown settings {unknown} (known: {known})"))
    found = key_entry(key_id, "", located(dict(settings)).value, _EVERY_TEAM, where, problems)  # type: ignore[arg-type]
    if problems or found is None:
        _refuse(problems)
    assert found is not None
    return found


def check_team_settings(
    team_id: str, settings: Mapping[str, Any], guards: Collection[str] | None = None
) -> TeamSpec:
    problems: list[Problem] = []
    where = f"team {team_id!r}"
    _known_guards(settings, guards, where, problems)
    unknown = sorted(set(settings) - TEAM_SETTINGS)
    if unknown:
        known = ", ".join(sorted(TEAM_SETTINGS))
        problems.append(Problem(0, f"{where}: unknown settings {unknown} (known: {known})"))
    found = team_entry(team_id, located(dict(settings)).value, where, problems)  # type: ignore[arg-type]
    if problems:
        _refuse(problems)
    return found


class Parsed:
    """Each record's specs, parsed once per version of the record."""

    def __init__(self) -> None:
        self._keys: dict[str, tuple[int, list[KeySpec]]] = {}
        self._teams: dict[str, tuple[int, TeamSpec | None]] = {}

    def key(self, record: Record) -> list[KeySpec]:
        """The key's spec, and one per old secret still in its grace period."""
        cached = self._keys.get(record["id"])
        if cached is not None and cached[0] == record["revision"]:
            return cached[1]
        specs: list[KeySpec] = []
        if not record.get("revoked_at"):
            base = check_key_settings(record["id"], record["settings"])
            base = dataclasses.replace(
                base, digest=record["digest"], source="api", blocked=bool(record.get("blocked"))
            )
            specs.append(base)
            for old in record.get("previous", ()):
                specs.append(
                    dataclasses.replace(base, digest=old["digest"], not_after=old["until"])
                )
        self._keys[record["id"]] = (record["revision"], specs)
        return specs

    def team(self, record: Record) -> TeamSpec | None:
        cached = self._teams.get(record["id"])
        if cached is not None and cached[0] == record["revision"]:
            return cached[1]
        team = None
        if not record.get("deleted_at"):
            found = check_team_settings(record["id"], record["settings"])
            team = dataclasses.replace(found, source="api", blocked=bool(record.get("blocked")))
        self._teams[record["id"]] = (record["revision"], team)
        return team


def merge(
    table: AliasTable,
    keys: Mapping[str, Record],
    teams: Mapping[str, Record],
    parsed: Parsed,
    now: float,
) -> AliasTable:
    """The file's table with the API's teams and keys added (the file's win a clash)."""
    access = table.access
    file_ids = {k.id for k in access.keys.values()}
    all_teams = dict(access.teams)
    for record in teams.values():
        team = parsed.team(record)
        if team is not None and team.id not in all_teams:
            all_teams[team.id] = team
    all_keys = dict(access.keys)
    for record in keys.values():
        if record["id"] in file_ids:
            continue
        for spec in parsed.key(record):
            if spec.not_after is not None and spec.not_after <= now:
                continue
            if spec.team is not None:
                team = all_teams.get(spec.team)
                if team is None or team.blocked:
                    spec = dataclasses.replace(spec, blocked=True)
            all_keys[spec.digest] = spec
    merged = AccessTable(MappingProxyType(all_keys), MappingProxyType(all_teams), access.settings)
    return dataclasses.replace(table, access=merged)


def _known_guards(
    settings: Mapping[str, Any],
    guards: Collection[str] | None,
    where: str,
    problems: list[Problem],
) -> None:
    named = settings.get("guards")
    if guards is None or not isinstance(named, list):
        return
    for name in named:
        if isinstance(name, str) and name not in guards:
            known = ", ".join(sorted(guards)) or "none declared in the alias file"
            problems.append(Problem(0, f"{where}: unknown guard {name!r} (known: {known})"))


def settings_of(spec: KeySpec | TeamSpec) -> dict[str, Any]:
    """A file key's or team's settings in the vocabulary the API takes."""
    limits = spec.limits
    found: dict[str, Any] = {
        name: value
        for name in ("rpm", "tpm", "max_parallel")
        if (value := getattr(limits, name)) is not None
    }
    if limits.budgets:
        found["budgets"] = [_budget(b) for b in limits.budgets]
    if spec.guards:
        found["guards"] = list(spec.guards)
    if isinstance(spec, KeySpec):
        if spec.models:
            found["models"] = list(spec.models)
        if spec.expires is not None:
            found["expires"] = spec.expires.isoformat()
        if spec.team is not None:
            found["team"] = spec.team
        if spec.role != "client":
            found["role"] = spec.role
        if spec.hosted_tools != "drop":
            found["hosted_tools"] = spec.hosted_tools
        if spec.end_user_budget is not None:
            found["end_user_budget"] = _budget(spec.end_user_budget)
    return found


def _budget(budget: Any) -> dict[str, Any]:
    found = {"usd": budget.usd, "per": budget.per}
    if budget.rolling:
        found["rolling"] = True
    found["alerts"] = [round(share * 100, 4) for share in budget.alerts]
    return found
