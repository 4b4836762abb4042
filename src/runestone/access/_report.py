"""Usage per key, team and model, read from the store (``GET /admin/usage``,
``runestone keys usage``, the console): every limit's use in its current window, and the
spend booked per UTC day, summed for today and this month: per model, per end user and
per tag.

A report is one page of keys, in order of id (``limit`` of them after the id ``after``;
``next`` names the page that follows), so that its cost and size do not grow with the
number of keys: the store is read twice for the page's limits and once for its ledger.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from runestone.access._limits import checks_for
from runestone.access._store import Check, SpendRow, Store, UsageRow
from runestone.access._windows import iso
from runestone.aliases import AccessTable, KeySpec

#: Keys per page unless asked otherwise, and the most a page may hold.
PAGE = 100
MAX_PAGE = 1000
#: The most rows of spend per end user (or tag) a report holds: the largest.
MAX_ROWS = 1000


async def usage_report(
    access: AccessTable,
    store: Store,
    only: str | None = None,
    now: float | None = None,
    *,
    limit: int = PAGE,
    after: str | None = None,
) -> dict[str, Any]:
    now = time.time() if now is None else now
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    # One entry per key: a rotated key is there under its old digest too, for a while.
    every = sorted({k.id: k for k in access.keys.values()}.values(), key=lambda k: k.id)
    if only is not None:
        keys = [k for k in every if k.id == only]
        following = None
    else:
        later = [k for k in every if after is None or k.id > after]
        keys = later[: max(1, min(limit, MAX_PAGE))]
        following = keys[-1].id if len(later) > len(keys) else None
    if only is not None:
        teams = sorted({k.team for k in keys if k.team})
    else:
        teams = sorted(access.teams) if after is None else []  # the first page has them
    owners = [(f"k:{key.id}", key.limits) for key in keys]
    owners += [(f"t:{team}", access.teams[team].limits) for team in teams]
    limits = await _limits(store, owners, now)
    month = today.replace(day=1).isoformat()
    rows = await store.usage(month, [k.id for k in keys])
    spent_by = await store.spend_by(month, [k.id for k in keys])
    report: dict[str, Any] = {
        "generated_at": iso(now),
        "store": store.name,
        "total_keys": len(every),
        "next": following,
    }
    report["keys"] = [_key(key, limits[f"k:{key.id}"]) for key in keys]
    report["teams"] = [{"id": team, "limits": limits[f"t:{team}"]} for team in teams]
    report["spend"] = {
        "today": _totals(row for row in rows if row.day == today.isoformat()),
        "month": _totals(rows),
    }
    for kind, name in (("user", "end_users"), ("tag", "tags")):
        found = [row for row in spent_by if row.kind == kind]
        report[name] = {
            "today": _by_name(row for row in found if row.day == today.isoformat()),
            "month": _by_name(found),
        }
    return report


def _key(key: KeySpec, limits: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": key.id,
        "team": key.team,
        "expires": key.expires.isoformat() if key.expires else None,
        "models": list(key.models) or "all",
        "limits": limits,
    }


async def _limits(
    store: Store, owners: list[tuple[str, Any]], now: float
) -> dict[str, list[dict[str, Any]]]:
    """Each owner's limits in their current windows: spent (buckets) and reserved or
    held (leases) apart, in two reads for every owner of the page."""
    checks = {scope: checks_for(scope, limits, now, 0.0) for scope, limits in owners}
    every = [check for found in checks.values() for check in found]
    booked = [replace(c, leases=False) for c in every]
    held = [replace(c, since=None) for c in every if c.leases]
    used = await store.used(booked, now) if booked else {}
    holding = await store.used(held, now) if held else {}
    return {scope: [_limit(c, used, holding) for c in found] for scope, found in checks.items()}


def _limit(check: Check, used: dict[str, float], holding: dict[str, float]) -> dict[str, Any]:
    name = check.counter.rpartition(":")[2]
    entry: dict[str, Any] = {"limit": name, "max": check.limit}
    if check.since is not None:
        entry["used"] = round(used.get(check.counter, 0.0), 6)
        entry["resets"] = iso(check.resets)
    if check.leases:
        entry["held" if name == "parallel" else "reserved"] = round(
            holding.get(check.counter, 0.0), 6
        )
    return entry


def _totals(rows: Iterable[UsageRow]) -> list[dict[str, Any]]:
    summed: dict[tuple[str, str, str], list[float]] = {}
    for row in rows:
        numbers = summed.setdefault((row.key, row.team, row.model), [0, 0, 0, 0.0, 0])
        numbers[0] += row.requests
        numbers[1] += row.input_tokens
        numbers[2] += row.output_tokens
        numbers[3] += row.usd
        numbers[4] += row.estimated
    return [
        {
            "key": key,
            "team": team or None,
            "model": model,
            "requests": int(n[0]),
            "input_tokens": int(n[1]),
            "output_tokens": int(n[2]),
            "usd": round(n[3], 8),
            "estimated": int(n[4]),
        }
        for (key, team, model), n in sorted(summed.items())
    ]


def _by_name(rows: Iterable[SpendRow]) -> list[dict[str, Any]]:
    """Spend per key and end user (or tag), the largest first, at most ``MAX_ROWS``."""
    summed: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        numbers = summed.setdefault((row.key, row.name), [0, 0, 0, 0.0])
        numbers[0] += row.requests
        numbers[1] += row.input_tokens
        numbers[2] += row.output_tokens
        numbers[3] += row.usd
    ranked = sorted(summed.items(), key=lambda item: (-item[1][3], item[0]))[:MAX_ROWS]
    return [
        {
            "key": key,
            "name": name,
            "requests": int(n[0]),
            "input_tokens": int(n[1]),
            "output_tokens": int(n[2]),
            "usd": round(n[3], 8),
        }
        for (key, name), n in ranked
    ]
