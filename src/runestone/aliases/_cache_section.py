"""An alias's or a key's ``cache:`` (the exact response cache's settings)."""

from __future__ import annotations

import re

from runestone.aliases._keys import CACHE_SCOPES, CacheSpec
from runestone.aliases._schema import Problem
from runestone.aliases._sections import unknown_keys
from runestone.aliases._yaml_nodes import Located

_CACHE_KEYS = frozenset({"ttl", "scope", "temperature"})
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|[smhd]?)$")
_UNITS = {"": 1, "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
#: The longest an answer may be kept.
MAX_CACHE_TTL = 30 * 86400


def cache_spec(entry: Located | None, where: str, problems: list[Problem]) -> CacheSpec | None:
    """``cache: {ttl: 10m, scope: key|team|global, temperature: false}``, or None."""
    if entry is None or entry.value is None or entry.value is False:
        return None
    shape = f"{where}: cache is {{ttl: <seconds, or 30s/10m/2h/1d>, scope: key|team|global}}"
    if not isinstance(entry.value, dict):
        problems.append(Problem(entry.line, shape))
        return None
    unknown_keys(entry.value, _CACHE_KEYS, f"{where} cache", problems)
    ttl_entry, scope, temperature = (entry.value.get(k) for k in ("ttl", "scope", "temperature"))
    ttl = duration_seconds(ttl_entry.value if ttl_entry is not None else None)
    if ttl is None or not 0 < ttl <= MAX_CACHE_TTL:
        problems.append(Problem(entry.line, f"{shape}; ttl at most 30 days"))
        return None
    if scope is not None and scope.value not in CACHE_SCOPES:
        problems.append(Problem(scope.line, shape))
        return None
    if temperature is not None and not isinstance(temperature.value, bool):
        problems.append(Problem(temperature.line, f"{where}: cache temperature is true|false"))
        return None
    return CacheSpec(
        ttl,
        scope.value if scope is not None else "key",
        bool(temperature.value) if temperature is not None else False,
    )


def duration_seconds(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        return None
    return float(match.group(1)) * _UNITS[match.group(2)]
