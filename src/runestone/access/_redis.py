"""The shared store: Redis 7 (or Valkey), for several gateway replicas.

``admit`` is one Lua script, so checking every limit and taking what the request
needs is atomic and one round trip; ``settle`` is one MULTI/EXEC pipeline for a batch
of finished requests. Every key carries the same hash tag (``{runestone}:...``), so the
scripts work on a Redis Cluster too (all access state lives on one shard; it is small).
Buckets are hash fields with the key's TTL refreshed on write; leases are hash fields
holding ``amount|expires``, dropped by the script once expired.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

from runestone.access._store import Check, Decision, Settlement, StateError, UsageRow

_MODES = {"count": "0", "lease": "1", "level": "2"}
_PER_CHECK = 7

# KEYS: two per check (its buckets hash, its leases hash).
# ARGV: now, lease, expires, dry, n, then per check: limit amount mode since bucket leases keep.
# Returns {refused index or 0, {used as strings}} (Lua numbers would be cut to integers).
_ADMIT = """
local now = tonumber(ARGV[1])
local lease, expires, dry, n = ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1', tonumber(ARGV[5])
local used = {}
local function sum(i, base)
  local total = 0
  local since, keep = ARGV[base + 4], tonumber(ARGV[base + 7])
  if since ~= '' then
    since = tonumber(since)
    local flat = redis.call('HGETALL', KEYS[2 * i - 1])
    for j = 1, #flat, 2 do
      local start = tonumber(flat[j])
      if start >= since then
        total = total + tonumber(flat[j + 1])
      elseif not dry and start + keep < now then
        redis.call('HDEL', KEYS[2 * i - 1], flat[j])
      end
    end
  end
  if ARGV[base + 6] == '1' then
    local flat = redis.call('HGETALL', KEYS[2 * i])
    for j = 1, #flat, 2 do
      local value = flat[j + 1]
      local bar = string.find(value, '|', 1, true)
      if tonumber(string.sub(value, bar + 1)) > now then
        total = total + tonumber(string.sub(value, 1, bar - 1))
      elseif not dry then
        redis.call('HDEL', KEYS[2 * i], flat[j])
      end
    end
  end
  return total
end
for i = 1, n do
  local base = 5 + (i - 1) * 7
  local total = sum(i, base)
  used[i] = tostring(total)
  if not dry and total + tonumber(ARGV[base + 2]) > tonumber(ARGV[base + 1]) then
    return {i, used}
  end
end
if dry then return {0, used} end
for i = 1, n do
  local base = 5 + (i - 1) * 7
  local mode = ARGV[base + 3]
  if mode == '0' then
    redis.call('HINCRBYFLOAT', KEYS[2 * i - 1], ARGV[base + 5], ARGV[base + 2])
    redis.call('EXPIRE', KEYS[2 * i - 1], math.ceil(tonumber(ARGV[base + 7])) + 60)
  elseif mode == '1' then
    redis.call('HSET', KEYS[2 * i], lease, ARGV[base + 2] .. '|' .. ARGV[3])
    redis.call('EXPIRE', KEYS[2 * i], math.ceil(expires - now) + 60)
  end
end
return {0, used}
"""

_LEDGER_DAYS = 400


class RedisStore:
    name = "redis"

    def __init__(self, url: str, *, prefix: str = "runestone", timeout: float = 0.25) -> None:
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import ConnectionError as RedisConnectionError
        except ImportError as exc:  # pragma: no cover - the extra is part of dev installs
            raise StateError(
                "RUNESTONE_REDIS_URL is set but redis is not installed: "
                "pip install 'runestone[redis]'"
            ) from exc
        self.url = url
        self._tag = "{" + prefix + "}"
        self._timeout = timeout
        self._client: Any = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
            # A pooled connection that died with a restarted server fails once; one retry
            # on a fresh connection, within the same short timeout, makes that invisible.
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[RedisConnectionError],
        )
        self._admit = self._client.register_script(_ADMIT)

    def __repr__(self) -> str:
        return f"<RedisStore {self._tag}>"

    def _keys(self, checks: Sequence[Check]) -> list[str]:
        keys = []
        for check in checks:
            keys.append(f"{self._tag}:b:{check.counter}")
            keys.append(f"{self._tag}:l:{check.counter}")
        return keys

    async def _run(
        self, checks: Sequence[Check], lease: str, now: float, expires: float, dry: bool
    ) -> tuple[int, list[float]]:
        args: list[str | int] = [
            repr(now),
            lease,
            repr(expires),
            "1" if dry else "0",
            len(checks),
        ]
        for check in checks:
            args += (
                repr(check.limit),
                repr(check.amount),
                _MODES[check.mode],
                "" if check.since is None else repr(check.since),
                repr(check.bucket),
                "1" if check.leases else "0",
                repr(check.keep),
            )
        reply = await self._call(self._admit(keys=self._keys(checks), args=args))
        return int(reply[0]), [float(value) for value in reply[1]]

    async def _call(self, awaitable: Any) -> Any:
        try:
            async with asyncio.timeout(self._timeout * 2):
                return await awaitable
        except Exception as exc:  # redis' errors, OSError, TimeoutError alike
            raise StateError(f"redis {self._safe_url()}: {type(exc).__name__}: {exc}") from None

    def _safe_url(self) -> str:
        # The URL may hold a password: name only where it is.
        host = self.url.rpartition("@")[2]
        return host.split("?")[0]

    async def admit(
        self, checks: Sequence[Check], lease: str, now: float, expires: float
    ) -> Decision:
        refused, used = await self._run(checks, lease, now, expires, dry=False)
        found = {check.counter: value for check, value in zip(checks, used, strict=False)}
        return Decision(checks[refused - 1] if refused else None, found)

    async def used(self, checks: Sequence[Check], now: float) -> dict[str, float]:
        if not checks:
            return {}
        _, used = await self._run(checks, "-", now, now, dry=True)
        return {check.counter: value for check, value in zip(checks, used, strict=True)}

    async def settle(self, settlements: Sequence[Settlement], now: float) -> None:
        pipe = self._client.pipeline(transaction=True)
        tag = self._tag
        for settled in settlements:
            for counter in settled.counters:
                pipe.hdel(f"{tag}:l:{counter}", settled.lease)
            for added in settled.additions:
                key = f"{tag}:b:{added.counter}"
                pipe.hincrbyfloat(key, repr(added.bucket), added.amount)
                pipe.expire(key, math.ceil(added.keep) + 60)
            entry = settled.ledger
            if entry is not None:
                key = f"{tag}:u:{entry.day}"
                row = f"{entry.key}\t{entry.team}\t{entry.model}"
                pipe.hincrby(key, f"{row}\trequests", 1)
                pipe.hincrby(key, f"{row}\tinput_tokens", entry.input_tokens)
                pipe.hincrby(key, f"{row}\toutput_tokens", entry.output_tokens)
                pipe.hincrbyfloat(key, f"{row}\tusd", entry.usd)
                pipe.expire(key, _LEDGER_DAYS * 86400)
        await self._call(pipe.execute())

    async def usage(self, since_day: str) -> list[UsageRow]:
        first = dt.date.fromisoformat(since_day)
        today = dt.datetime.now(dt.UTC).date()
        days = [str(first + dt.timedelta(days=n)) for n in range((today - first).days + 1)]
        pipe = self._client.pipeline(transaction=False)
        for day in days:
            pipe.hgetall(f"{self._tag}:u:{day}")
        replies = await self._call(pipe.execute())
        rows = []
        for day, fields in zip(days, replies, strict=True):
            table: dict[tuple[str, str, str], dict[str, float]] = {}
            for name, value in fields.items():
                key, team, model, field = name.split("\t")
                table.setdefault((key, team, model), {})[field] = float(value)
            for (key, team, model), numbers in sorted(table.items()):
                rows.append(
                    UsageRow(
                        day,
                        key,
                        team,
                        model,
                        int(numbers.get("requests", 0)),
                        int(numbers.get("input_tokens", 0)),
                        int(numbers.get("output_tokens", 0)),
                        numbers.get("usd", 0.0),
                    )
                )
        return rows

    async def ping(self) -> None:
        await self._call(self._client.ping())

    async def aclose(self) -> None:
        await self._client.aclose()
