"""Usage per key, team and model, read from the store (``GET /admin/usage``,
``runestone keys usage``): every limit's use in its current window, and the spend
booked per UTC day, summed for today and this month."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import replace
from typing import Any

from runestone.access._limits import checks_for
from runestone.access._store import Check, Store, UsageRow
from runestone.access._windows import iso
from runestone.aliases import AccessTable, Limits


async def usage_report(
    access: AccessTable, store: Store, only: str | None = None, now: float | None = None
) -> dict[str, Any]:
    now = time.time() if now is None else now
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    rows = await store.usage(today.replace(day=1).isoformat())
    keys = [k for k in access.keys.values() if only is None or k.id == only]
    teams = {k.team for k in keys if k.team} if only is not None else set(access.teams)
    report: dict[str, Any] = {"generated_at": iso(now), "store": store.name}
    report["keys"] = [
        {
            "id": key.id,
            "team": key.team,
            "expires": key.expires.isoformat() if key.expires else None,
            "models": list(key.models) or "all",
            "limits": await _limits(store, f"k:{key.id}", key.limits, now),
        }
        for key in sorted(keys, key=lambda k: k.id)
    ]
    report["teams"] = [
        {"id": team, "limits": await _limits(store, f"t:{team}", access.teams[team].limits, now)}
        for team in sorted(teams)
    ]
    wanted = {k.id for k in keys}
    mine = [row for row in rows if row.key in wanted]
    report["spend"] = {
        "today": _totals(row for row in mine if row.day == today.isoformat()),
        "month": _totals(mine),
    }
    return report


async def _limits(store: Store, scope: str, limits: Limits, now: float) -> list[dict[str, Any]]:
    checks = checks_for(scope, limits, now, 0.0)
    if not checks:
        return []
    # Spent (buckets) and reserved or held (leases), apart: one dry read for both.
    booked = [replace(c, leases=False) for c in checks]
    held = [replace(c, since=None) for c in checks if c.leases]
    used = await store.used(booked, now)
    holding = await store.used(held, now) if held else {}
    return [_limit(check, used, holding) for check in checks]


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


def _totals(rows: Any) -> list[dict[str, Any]]:
    summed: dict[tuple[str, str, str], list[float]] = {}
    for row in rows:
        assert isinstance(row, UsageRow)
        numbers = summed.setdefault((row.key, row.team, row.model), [0, 0, 0, 0.0])
        numbers[0] += row.requests
        numbers[1] += row.input_tokens
        numbers[2] += row.output_tokens
        numbers[3] += row.usd
    return [
        {
            "key": key,
            "team": team or None,
            "model": model,
            "requests": int(n[0]),
            "input_tokens": int(n[1]),
            "output_tokens": int(n[2]),
            "usd": round(n[3], 8),
        }
        for (key, team, model), n in sorted(summed.items())
    ]
