"""Cached answers in Redis, for replicas (the limits' URL and hash tag).

An entry is one string key with its TTL; a sorted set by age, a hash of sizes and
owners, and a byte total let one script drop the oldest past the bounds, atomically with
the write.
"""

from __future__ import annotations

from typing import Any

from runestone.access._redis import bounded, connect
from runestone.cache._store import CacheBounds, Entry

# KEYS: order, meta, total, entry. ARGV: key, body, size, ttl ms, now, max count,
# max bytes, meta (size, scope, alias separated by tabs).
_PUT = """
local order, meta, total, entry = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local prefix = string.sub(entry, 1, #entry - #ARGV[1])
local function drop(victim)
  local found = redis.call('HGET', meta, victim)
  if found then
    redis.call('DECRBY', total, tonumber(string.match(found, '^[^\\t]*')))
  end
  redis.call('HDEL', meta, victim)
  redis.call('ZREM', order, victim)
  redis.call('DEL', prefix .. victim)
end
drop(ARGV[1])
redis.call('SET', entry, ARGV[2], 'PX', ARGV[4])
redis.call('ZADD', order, tonumber(ARGV[5]), ARGV[1])
redis.call('HSET', meta, ARGV[1], ARGV[8])
redis.call('INCRBY', total, ARGV[3])
-- Entries gone by their TTL leave their index rows: dropped here when found.
local first = redis.call('ZRANGE', order, 0, 63)
for _, victim in ipairs(first) do
  if victim ~= ARGV[1] and redis.call('EXISTS', prefix .. victim) == 0 then drop(victim) end
end
while redis.call('ZCARD', order) > tonumber(ARGV[6])
    or tonumber(redis.call('GET', total) or '0') > tonumber(ARGV[7]) do
  local oldest = redis.call('ZRANGE', order, 0, 0)[1]
  if not oldest then break end
  drop(oldest)
end
return 1
"""


class RedisCache:
    name = "redis"

    def __init__(
        self, url: str, bounds: CacheBounds, *, prefix: str = "runestone", timeout: float = 0.25
    ) -> None:
        self.url = url
        self.bounds = bounds
        tag = "{" + prefix + "}"
        self._order = f"{tag}:cache:order"
        self._meta = f"{tag}:cache:meta"
        self._total = f"{tag}:cache:total"
        self._entry = f"{tag}:cache:e:"
        self._timeout = timeout
        self._client = connect(url, timeout)
        self._put = self._client.register_script(_PUT)

    def _call(self, awaitable: Any) -> Any:
        return bounded(awaitable, self._timeout, self.url)

    async def get(self, key: str, now: float) -> Entry | None:
        raw = await self._call(self._client.get(self._entry + key))
        return None if raw is None else Entry.decode(raw)

    async def put(self, key: str, entry: Entry, ttl: float, now: float) -> None:
        body = entry.encode()
        keys = [self._order, self._meta, self._total, self._entry + key]
        meta = f"{len(body)}\t{entry.scope}\t{entry.alias}"
        args = [key, body, len(body), max(1, int(ttl * 1000)), now]
        args += [self.bounds.max_entries, self.bounds.max_bytes, meta]
        await self._call(self._put(keys=keys, args=args))

    async def purge(self, scope: str | None, alias: str | None) -> int:
        meta = await self._call(self._client.hgetall(self._meta))
        victims = []
        for key, value in meta.items():
            _, owner, named = value.split("\t")
            if (scope is None or owner == scope) and (alias is None or named == alias):
                victims.append(key)
        for start in range(0, len(victims), 500):
            batch = victims[start : start + 500]
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(*[self._entry + key for key in batch])
            pipe.hdel(self._meta, *batch)
            pipe.zrem(self._order, *batch)
            await self._call(pipe.execute())
        if victims:  # the byte total is worked out again from what is left
            sizes = await self._call(self._client.hvals(self._meta))
            await self._call(
                self._client.set(self._total, sum(int(v.split("\t")[0]) for v in sizes))
            )
        return len(victims)

    async def aclose(self) -> None:
        await self._client.aclose()
