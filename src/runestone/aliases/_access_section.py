"""The alias file's access sections: ``keys``, ``teams`` and ``access``.

Client keys live in the same file as the aliases so that one edit, validated whole and
hot-reloaded, changes who may use what. The file holds only each key's SHA-256 digest;
``runestone keys create`` prints the key once, with the entry to paste here::

    keys:
      team-search:
        hash: sha256:9f86d0...
        models: [fast, "openai:*"]       # default: every model
        rpm: 600                         # requests per minute
        tpm: 2000000                     # tokens per minute (input + output)
        max_parallel: 20                 # requests in flight
        budgets: [{usd: 50, per: day}, {usd: 1000, per: month, rolling: true}]
        expires: 2027-06-30
        team: search
    teams:
      search: {rpm: 3000, budgets: [{usd: 5000, per: month}]}
    access:
      on_state_error: {budgets: closed, rate_limits: open}
      default_reservation_usd: 0.05
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from types import MappingProxyType

from runestone.aliases._cache_section import cache_spec
from runestone.aliases._guards_section import guard_names
from runestone.aliases._keys import (
    DEFAULT_ALERTS,
    NO_ACCESS,
    PERIODS,
    ROLES,
    AccessSettings,
    AccessTable,
    Budget,
    HostedTools,
    KeySpec,
    Limits,
    TeamSpec,
)
from runestone.aliases._schema import Problem
from runestone.aliases._sections import unknown_keys
from runestone.aliases._yaml_nodes import Located

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HASH = re.compile(r"^sha256:([0-9a-f]{64})$")
_LIMIT_KEYS = frozenset({"rpm", "tpm", "max_parallel", "budgets"})
#: What a key declares besides its secret's hash (the API's keys take the same settings).
KEY_SETTINGS = _LIMIT_KEYS | {
    "models",
    "expires",
    "team",
    "hosted_tools",
    "role",
    "end_user_budget",
    "cache",
    "guards",
}
TEAM_SETTINGS = _LIMIT_KEYS | {"guards"}
_KEY_KEYS = KEY_SETTINGS | {"hash"}
_BUDGET_KEYS = frozenset({"usd", "per", "rolling", "alerts"})
_ACCESS_KEYS = frozenset({"on_state_error", "default_reservation_usd", "reservation_ttl"})


def parse_access(root: Mapping[str, Located], problems: list[Problem]) -> AccessTable:
    """The ``keys``, ``teams`` and ``access`` sections of the file's top level."""
    teams = _parse_teams(root.get("teams"), problems)
    keys = _parse_keys(root.get("keys"), teams, problems)
    settings = _parse_settings(root.get("access"), problems)
    if not keys and not teams and "access" not in root:
        return NO_ACCESS
    return AccessTable(MappingProxyType(keys), MappingProxyType(teams), settings)


def _entries(
    section: Located | None,
    problems: list[Problem],
    *,
    kind: str,
    section_shape: str,
    entry_shape: str,
) -> list[tuple[str, dict[str, Located], int, str]]:
    """(id, settings, line, where) of each well-formed entry of a map of ids to maps."""
    if section is None or section.value is None:
        return []
    if not isinstance(section.value, dict):
        problems.append(Problem(section.line, section_shape))
        return []
    found = []
    for entry_id, entry in section.value.items():
        where = f"{kind} {entry_id!r}"
        if not _ID.match(entry_id):
            problems.append(Problem(entry.line, f"{where}: ids are letters, digits, '.-_'"))
        elif not isinstance(entry.value, dict):
            problems.append(Problem(entry.line, f"{where}: {entry_shape}"))
        else:
            found.append((entry_id, entry.value, entry.line, where))
    return found


def _parse_teams(section: Located | None, problems: list[Problem]) -> dict[str, TeamSpec]:
    teams = {}
    for team_id, value, line, where in _entries(
        section,
        problems,
        kind="team",
        section_shape="'teams' must map team ids to their limits",
        entry_shape="expected a map of limits",
    ):
        unknown_keys(value, TEAM_SETTINGS, where, problems)
        teams[team_id] = team_entry(team_id, value, where, problems, line)
    return teams


def _parse_keys(
    section: Located | None, teams: Mapping[str, TeamSpec], problems: list[Problem]
) -> dict[str, KeySpec]:
    keys: dict[str, KeySpec] = {}
    for key_id, value, line, where in _entries(
        section,
        problems,
        kind="key",
        section_shape="'keys' must map key ids to their settings",
        entry_shape="expected a map with 'hash'",
    ):
        before = len(problems)
        unknown_keys(value, _KEY_KEYS, where, problems)
        digest = _digest(value.get("hash"), line, where, problems)
        if digest is not None and digest in keys:
            problems.append(Problem(line, f"{where}: same hash as key {keys[digest].id!r}"))
        key = key_entry(key_id, digest or "", value, teams, where, problems, line)
        if len(problems) > before or digest is None or key is None:
            continue
        keys[digest] = key
    return keys


def key_entry(
    key_id: str,
    digest: str,
    value: Mapping[str, Located],
    teams: Mapping[str, TeamSpec],
    where: str,
    problems: list[Problem],
    line: int = 0,
) -> KeySpec | None:
    """One key's settings (``KEY_SETTINGS``), checked; None when a problem was found."""
    before = len(problems)
    models = _models(value.get("models"), where, problems)
    expires = _date(value.get("expires"), where, problems)
    team = value.get("team")
    team_id = None
    if team is not None and team.value is not None:
        if not isinstance(team.value, str) or team.value not in teams:
            known = ", ".join(sorted(teams)) or "none declared under 'teams'"
            problems.append(Problem(team.line, f"{where}: unknown team (known: {known})"))
        else:
            team_id = team.value
    limits = _parse_limits(value, where, problems)
    hosted = hosted_tools(value.get("hosted_tools"), where, problems)
    role = value.get("role")
    if role is not None and role.value not in ROLES:
        problems.append(Problem(role.line, f"{where}: 'role' must be one of {', '.join(ROLES)}"))
    if role is not None and role.value == "team_admin" and team_id is None:
        problems.append(Problem(role.line, f"{where}: a team_admin key needs a 'team'"))
    per_user = value.get("end_user_budget")
    end_user_budget = None
    if per_user is not None and per_user.value is not None:
        found = _budgets(Located([per_user], per_user.line), f"{where} end_user_budget", problems)
        end_user_budget = found[0] if found else None
    cache = cache_spec(value.get("cache"), where, problems)
    guards = guard_names(value.get("guards"), where, problems)
    if len(problems) > before:
        return None
    return KeySpec(
        key_id,
        digest,
        limits,
        models,
        expires,
        team_id,
        line,
        hosted,
        role=role.value if role is not None else "client",  # type: ignore[arg-type]
        end_user_budget=end_user_budget,
        cache=cache,
        guards=guards,
    )


def team_entry(
    team_id: str, value: Mapping[str, Located], where: str, problems: list[Problem], line: int = 0
) -> TeamSpec:
    """One team's settings (``TEAM_SETTINGS``), checked."""
    limits = _parse_limits(value, where, problems)
    guards = guard_names(value.get("guards"), where, problems)
    return TeamSpec(team_id, limits, line, guards=guards)


def valid_id(text: object) -> bool:
    return isinstance(text, str) and _ID.match(text) is not None


def _digest(entry: Located | None, line: int, where: str, problems: list[Problem]) -> str | None:
    if entry is None:
        problems.append(Problem(line, f"{where}: missing 'hash' (runestone keys create prints it)"))
        return None
    match = _HASH.match(entry.value) if isinstance(entry.value, str) else None
    if match is None:
        problems.append(
            Problem(entry.line, f"{where}: 'hash' must be sha256:<64 lowercase hex digits>")
        )
        return None
    return match.group(1)


def _models(entry: Located | None, where: str, problems: list[Problem]) -> tuple[str, ...]:
    if entry is None:
        return ()
    if not isinstance(entry.value, list) or not all(
        isinstance(item.value, str) and item.value for item in entry.value
    ):
        problems.append(Problem(entry.line, f"{where}: 'models' must be a list of names"))
        return ()
    return tuple(str(item.value) for item in entry.value)


def hosted_tools(given: Located | None, where: str, problems: list[Problem]) -> HostedTools:
    """What a target that cannot run a provider's hosted tools does with them."""
    if given is None:
        return "drop"
    if given.value not in ("drop", "refuse"):
        problems.append(Problem(given.line, f"{where}: 'hosted_tools' must be drop or refuse"))
        return "drop"
    return "refuse" if given.value == "refuse" else "drop"


def _date(entry: Located | None, where: str, problems: list[Problem]) -> dt.date | None:
    if entry is None:
        return None
    value = entry.value
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    problems.append(Problem(entry.line, f"{where}: 'expires' must be a date (YYYY-MM-DD)"))
    return None


def _parse_limits(value: Mapping[str, Located], where: str, problems: list[Problem]) -> Limits:
    numbers: dict[str, int] = {}
    for name in ("rpm", "tpm", "max_parallel"):
        entry = value.get(name)
        if entry is None:
            continue
        if isinstance(entry.value, bool) or not isinstance(entry.value, int) or entry.value < 1:
            problems.append(Problem(entry.line, f"{where}: {name} must be a positive integer"))
            continue
        numbers[name] = entry.value
    return Limits(
        rpm=numbers.get("rpm"),
        tpm=numbers.get("tpm"),
        max_parallel=numbers.get("max_parallel"),
        budgets=_budgets(value.get("budgets"), where, problems),
    )


def _budgets(entry: Located | None, where: str, problems: list[Problem]) -> tuple[Budget, ...]:
    if entry is None:
        return ()
    if not isinstance(entry.value, list):
        problems.append(Problem(entry.line, f"{where}: 'budgets' must be a list"))
        return ()
    budgets: list[Budget] = []
    for item in entry.value:
        shape = f"{where}: a budget is {{usd: <amount>, per: {'|'.join(PERIODS)}}}"
        if not isinstance(item.value, dict):
            problems.append(Problem(item.line, shape))
            continue
        unknown_keys(item.value, _BUDGET_KEYS, f"{where} budget", problems)
        usd = item.value.get("usd")
        per = item.value.get("per")
        rolling = item.value.get("rolling")
        alerts = _alerts(item.value.get("alerts"), where, problems)
        amount = usd.value if usd is not None else None
        if (
            isinstance(amount, bool)
            or not isinstance(amount, int | float)
            or amount <= 0
            or per is None
            or per.value not in PERIODS
            or (rolling is not None and not isinstance(rolling.value, bool))
        ):
            problems.append(Problem(item.line, shape + " (rolling: true|false)"))
            continue
        budget = Budget(float(amount), per.value, bool(rolling.value) if rolling else False, alerts)
        if any(b.name == budget.name for b in budgets):
            problems.append(Problem(item.line, f"{where}: two budgets per {budget.per}"))
            continue
        budgets.append(budget)
    return tuple(budgets)


def _alerts(entry: Located | None, where: str, problems: list[Problem]) -> tuple[float, ...]:
    """A budget's alert thresholds: percentages of it, from 1 to 100 (``[]``: none)."""
    if entry is None:
        return DEFAULT_ALERTS
    values = entry.value if isinstance(entry.value, list) else None
    if values is None or not all(
        isinstance(v.value, int | float) and not isinstance(v.value, bool) and 0 < v.value <= 100
        for v in values
    ):
        problems.append(Problem(entry.line, f"{where}: 'alerts' is a list of percentages, 1-100"))
        return DEFAULT_ALERTS
    return tuple(sorted({float(v.value) / 100 for v in values}))


def _parse_settings(section: Located | None, problems: list[Problem]) -> AccessSettings:
    if section is None or section.value is None:
        return AccessSettings()
    if not isinstance(section.value, dict):
        problems.append(Problem(section.line, "'access' must be a map of settings"))
        return AccessSettings()
    value = section.value
    unknown_keys(value, _ACCESS_KEYS, "access", problems)
    settings = AccessSettings()
    budgets_mode, limits_mode = settings.budgets_on_state_error, settings.limits_on_state_error
    modes = value.get("on_state_error")
    if modes is not None:
        shape = "access: on_state_error is {budgets: open|closed, rate_limits: open|closed}"
        if not isinstance(modes.value, dict):
            problems.append(Problem(modes.line, shape))
        else:
            unknown_keys(modes.value, frozenset({"budgets", "rate_limits"}), "access", problems)
            for name, mode in modes.value.items():
                if mode.value not in ("open", "closed"):
                    problems.append(Problem(mode.line, shape))
                elif name == "budgets":
                    budgets_mode = mode.value
                elif name == "rate_limits":
                    limits_mode = mode.value
    numbers: dict[str, float] = {}
    for name in ("default_reservation_usd", "reservation_ttl"):
        entry = value.get(name)
        if entry is None:
            continue
        number = entry.value
        if isinstance(number, bool) or not isinstance(number, int | float) or number <= 0:
            problems.append(Problem(entry.line, f"access: {name} must be a positive number"))
            continue
        numbers[name] = float(number)
    return AccessSettings(
        budgets_mode,
        limits_mode,
        numbers.get("default_reservation_usd", settings.default_reservation_usd),
        numbers.get("reservation_ttl", settings.reservation_ttl),
    )
