"""The shared store: Redis 7 (or Valkey), for several gateway replicas.

A ``sync`` is one Lua script, so it is atomic and one round trip, however many
requests it settles and admits. Every key carries the same hash tag
(``{runestone}:...``) and is passed in ``KEYS``, so the script runs on a Redis Cluster
too (all access state lives on one shard; it is small). Buckets are hash fields with
the key's TTL refreshed on write; leases are hash fields holding ``amount|expires``,
dropped by the script once expired.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

from runestone.access._store import (
    STORE_TIMEOUT,
    Check,
    Decision,
    Request,
    Settlement,
    SpendRow,
    StateError,
    UsageRow,
    spend_names,
)

_MODES = {"count": "0", "lease": "1", "level": "2"}
_LEDGER_SECONDS = 400 * 86400

# ARGV is a list of operations, each a tag and its fields; keys are KEYS indexes.
#   R <leases key> <lease>                        release a lease
#   A <buckets key> <field> <amount> <ttl>        add to a bucket
#   Q <lease> <expires> <n> then n checks of 8:   admit a request
#     <buckets key> <leases key> <limit> <amount> <mode> <since or ''> <bucket> <ttl>
#   D <n> then n checks as above                  read only (reports)
# Returns, per Q or D, {refused check's number or 0, {used as strings}} (Lua numbers
# would be cut to integers on the way out).
_SYNC = """
local now = tonumber(ARGV[1])
local results = {}
local function used(at, dry)
  local total = 0
  local buckets, leases, since = KEYS[tonumber(ARGV[at])], ARGV[at + 1], ARGV[at + 5]
  if since ~= '' then
    since = tonumber(since)
    local flat = redis.call('HGETALL', buckets)
    for j = 1, #flat, 2 do
      if tonumber(flat[j]) >= since then
        total = total + tonumber(flat[j + 1])
      elseif not dry then
        redis.call('HDEL', buckets, flat[j])
      end
    end
  end
  if leases ~= '' then
    leases = KEYS[tonumber(leases)]
    local flat = redis.call('HGETALL', leases)
    for j = 1, #flat, 2 do
      local value = flat[j + 1]
      local bar = string.find(value, '|', 1, true)
      if tonumber(string.sub(value, bar + 1)) > now then
        total = total + tonumber(string.sub(value, 1, bar - 1))
      elseif not dry then
        redis.call('HDEL', leases, flat[j])
      end
    end
  end
  return total
end
local i = 2
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'R' then
    redis.call('HDEL', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2])
    i = i + 3
  elseif op == 'A' then
    local key = KEYS[tonumber(ARGV[i + 1])]
    redis.call('HINCRBYFLOAT', key, ARGV[i + 2], ARGV[i + 3])
    redis.call('EXPIRE', key, ARGV[i + 4])
    i = i + 5
  else
    local dry = op == 'D'
    local lease, expires, n
    if dry then
      n = tonumber(ARGV[i + 1])
      i = i + 2
    else
      lease, expires, n = ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
      i = i + 4
    end
    local found, refused = {}, 0
    for c = 1, n do
      local at = i + (c - 1) * 8
      local total = used(at, dry)
      found[c] = tostring(total)
      if not dry and total + tonumber(ARGV[at + 3]) > tonumber(ARGV[at + 2]) then
        refused = c
        break
      end
    end
    if not dry and refused == 0 then
      for c = 1, n do
        local at = i + (c - 1) * 8
        local mode = ARGV[at + 4]
        if mode == '0' then
          local key = KEYS[tonumber(ARGV[at])]
          redis.call('HINCRBYFLOAT', key, ARGV[at + 6], ARGV[at + 3])
          redis.call('EXPIRE', key, ARGV[at + 7])
        elseif mode == '1' then
          local key = KEYS[tonumber(ARGV[at + 1])]
          redis.call('HSET', key, lease, ARGV[at + 3] .. '|' .. expires)
          redis.call('EXPIRE', key, math.ceil(tonumber(expires) - now) + 60)
        end
      end
    end
    results[#results + 1] = {refused, found}
    i = i + n * 8
  end
end
return results
"""


class _Script:
    """The operations of one ``sync``, with their keys numbered as KEYS wants them."""

    def __init__(self, tag: str, now: float) -> None:
        self.tag = tag
        self.keys: list[str] = []
        self._index: dict[str, str] = {}
        self.args: list[str] = [repr(now)]

    def key(self, name: str) -> str:
        found = self._index.get(name)
        if found is None:
            self.keys.append(f"{self.tag}:{name}")
            found = self._index[name] = str(len(self.keys))
        return found

    def checks(self, checks: Sequence[Check]) -> None:
        for check in checks:
            self.args += (
                self.key(f"b:{check.counter}"),
                self.key(f"l:{check.counter}") if check.leases else "",
                repr(check.limit),
                repr(check.amount),
                _MODES[check.mode],
                "" if check.since is None else repr(check.since),
                repr(check.bucket),
                str(math.ceil(check.keep) + 60),
            )

    def add(self, name: str, field: str, amount: float, ttl: float) -> None:
        self.args += ("A", self.key(name), field, repr(amount), str(math.ceil(ttl)))


def connect(url: str, timeout: float) -> Any:
    """A Redis client for a store: short timeouts, one retry on a fresh connection."""
    try:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
    except ImportError as exc:  # pragma: no cover - the extra is part of dev installs
        raise StateError(
            "RUNESTONE_REDIS_URL is set but redis is not installed: pip install 'runestone[redis]'"
        ) from exc
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=True,
        # A pooled connection that died with a restarted server fails once; one retry on
        # a fresh connection, within the same short timeout, makes that invisible.
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[RedisConnectionError],
    )


async def bounded(awaitable: Any, seconds: float, url: str) -> Any:
    """``awaitable``, or ``StateError`` if Redis fails or takes over twice ``seconds``."""
    try:
        async with asyncio.timeout(seconds * 2):
            return await awaitable
    except Exception as exc:  # redis' errors, OSError, TimeoutError alike
        where = url.rpartition("@")[2].split("?")[0]  # the URL may hold a password
        raise StateError(f"redis {where}: {type(exc).__name__}: {exc}") from None


def _days_from(since_day: str) -> list[str]:
    first = dt.date.fromisoformat(since_day)
    today = dt.datetime.now(dt.UTC).date()
    return [str(first + dt.timedelta(days=n)) for n in range((today - first).days + 1)]


class RedisStore:
    name = "redis"

    def __init__(
        self, url: str, *, prefix: str = "runestone", timeout: float = STORE_TIMEOUT / 2
    ) -> None:
        self.url = url
        self.prefix = prefix
        self._tag = "{" + prefix + "}"
        self._timeout = timeout
        self._client = connect(url, timeout)
        self._sync = self._client.register_script(_SYNC)
        self._channel: Any = None
        try:  # the hot script on its own connection, when hiredis is there to parse
            from runestone.access._redis_script import ScriptChannel
        except ImportError:  # pragma: no cover - hiredis comes with the redis extra
            pass
        else:
            self._channel = ScriptChannel(url, _SYNC, timeout)

    def __repr__(self) -> str:
        return f"<RedisStore {self._tag}>"

    def _call(self, awaitable: Any) -> Any:
        return bounded(awaitable, self._timeout, self.url)

    async def _run(self, script: _Script) -> list[Any]:
        if self._channel is not None:
            return list(await self._call(self._channel.run(script.keys, script.args)))
        return list(await self._call(self._sync(keys=script.keys, args=script.args)))

    async def sync(
        self, settlements: Sequence[Settlement], requests: Sequence[Request], now: float
    ) -> list[Decision]:
        script = _Script(self._tag, now)
        for settled in settlements:
            for counter in settled.counters:
                script.args += ("R", script.key(f"l:{counter}"), settled.lease)
            for added in settled.additions:
                script.add(f"b:{added.counter}", repr(added.bucket), added.amount, added.keep + 60)
            entry = settled.ledger
            if entry is not None:
                name = f"u:{entry.day}"
                row = f"{entry.key}\t{entry.team}\t{entry.model}"
                script.add(name, f"{row}\trequests", 1, _LEDGER_SECONDS)
                script.add(name, f"{row}\tinput_tokens", entry.input_tokens, _LEDGER_SECONDS)
                script.add(name, f"{row}\toutput_tokens", entry.output_tokens, _LEDGER_SECONDS)
                script.add(name, f"{row}\tusd", entry.usd, _LEDGER_SECONDS)
                if entry.estimated:
                    script.add(name, f"{row}\testimated", entry.estimated, _LEDGER_SECONDS)
                for kind, who in spend_names(entry):
                    by = f"{entry.key}\t{kind}\t{who}"
                    for field, amount in (
                        ("requests", 1),
                        ("input_tokens", entry.input_tokens),
                        ("output_tokens", entry.output_tokens),
                        ("usd", entry.usd),
                    ):
                        script.add(f"s:{entry.day}", f"{by}\t{field}", amount, _LEDGER_SECONDS)
        for request in requests:
            script.args += ("Q", request.lease, repr(request.expires), str(len(request.checks)))
            script.checks(request.checks)
        if len(script.args) == 1:
            return []
        replies = await self._run(script)
        decisions = []
        for request, (refused, used) in zip(requests, replies, strict=True):
            found = {c.counter: float(v) for c, v in zip(request.checks, used, strict=False)}
            decisions.append(Decision(request.checks[refused - 1] if refused else None, found))
        return decisions

    async def used(self, checks: Sequence[Check], now: float) -> dict[str, float]:
        if not checks:
            return {}
        script = _Script(self._tag, now)
        script.args += ("D", str(len(checks)))
        script.checks(checks)
        ((_, used),) = await self._run(script)
        return {check.counter: float(value) for check, value in zip(checks, used, strict=True)}

    async def usage(self, since_day: str, keys: Sequence[str] | None = None) -> list[UsageRow]:
        wanted = None if keys is None else set(keys)
        days = _days_from(since_day)
        pipe = self._client.pipeline(transaction=False)
        for day in days:
            pipe.hgetall(f"{self._tag}:u:{day}")
        replies = await self._call(pipe.execute())
        rows = []
        for day, fields in zip(days, replies, strict=True):
            table: dict[tuple[str, str, str], dict[str, float]] = {}
            for name, value in fields.items():
                key, team, model, field = name.split("\t")
                if wanted is not None and key not in wanted:
                    continue
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
                        int(numbers.get("estimated", 0)),
                    )
                )
        return rows

    async def spend_by(self, since_day: str, keys: Sequence[str] | None = None) -> list[SpendRow]:
        wanted = None if keys is None else set(keys)
        days = _days_from(since_day)
        pipe = self._client.pipeline(transaction=False)
        for day in days:
            pipe.hgetall(f"{self._tag}:s:{day}")
        replies = await self._call(pipe.execute())
        rows = []
        for day, fields in zip(days, replies, strict=True):
            table: dict[tuple[str, str, str], dict[str, float]] = {}
            for name, value in fields.items():
                key, kind, who, field = name.split("\t")
                if wanted is None or key in wanted:
                    table.setdefault((key, kind, who), {})[field] = float(value)
            for (key, kind, who), n in sorted(table.items()):
                rows.append(
                    SpendRow(
                        day,
                        key,
                        kind,
                        who,
                        int(n.get("requests", 0)),
                        int(n.get("input_tokens", 0)),
                        int(n.get("output_tokens", 0)),
                        n.get("usd", 0.0),
                    )
                )
        return rows

    async def check(self) -> None:
        # A write, not a PING: a read-only replica answers PING and refuses every sync.
        await self._call(self._client.set(f"{self._tag}:probe", "1", ex=60))

    async def aclose(self) -> None:
        if self._channel is not None:
            self._channel.close()
        await self._client.aclose()
