"""Stored responses in Redis, for replicas: each answer written before its last event
goes out, so that the next turn finds it on whichever replica it lands.

Keys share the limits' hash tag (one shard on a Cluster). A response is one string key
with the bounds' age as its TTL; an item id maps to ``owner|response``; a sorted set by
age and a hash of sizes let one script drop the oldest past the count and byte bounds,
atomically with the write.
"""

from __future__ import annotations

from typing import Any

from runestone.access._redis import bounded, connect
from runestone.conversations._store import Bounds, Stored

# KEYS: order, sizes, total, body key, then item keys. ARGV: id, body, size, ttl ms,
# created, oldest kept (created), max count, max bytes, item value, then item ids.
_PUT = """
local order, sizes, total, body = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, ttl = ARGV[1], tonumber(ARGV[4])
local old = redis.call('HGET', sizes, id)
if old then redis.call('DECRBY', total, old) end
redis.call('SET', body, ARGV[2], 'PX', ttl)
redis.call('ZADD', order, tonumber(ARGV[5]), id)
redis.call('HSET', sizes, id, ARGV[3])
redis.call('INCRBY', total, ARGV[3])
for i = 5, #KEYS do redis.call('SET', KEYS[i], ARGV[9], 'PX', ttl) end
local prefix = string.sub(body, 1, #body - #id)
local function drop(victim)
  local size = redis.call('HGET', sizes, victim)
  if size then redis.call('DECRBY', total, size) end
  redis.call('HDEL', sizes, victim)
  redis.call('ZREM', order, victim)
  redis.call('DEL', prefix .. victim)
end
for _, victim in ipairs(redis.call('ZRANGEBYSCORE', order, '-inf', '(' .. ARGV[6])) do
  drop(victim)
end
while redis.call('ZCARD', order) > tonumber(ARGV[7])
    or tonumber(redis.call('GET', total) or '0') > tonumber(ARGV[8]) do
  local oldest = redis.call('ZRANGE', order, 0, 0)[1]
  if not oldest then break end
  drop(oldest)
end
redis.call('PEXPIRE', order, ttl)
redis.call('PEXPIRE', sizes, ttl)
redis.call('PEXPIRE', total, ttl)
return 1
"""
_DELETE = """
local size = redis.call('HGET', KEYS[2], ARGV[1])
if size then redis.call('DECRBY', KEYS[3], size) end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
return redis.call('DEL', KEYS[4])
"""


class RedisResponses:
    name = "redis"

    def __init__(
        self, url: str, *, prefix: str = "runestone", bounds: Bounds, timeout: float = 1.0
    ) -> None:
        self.url = url
        self.bounds = bounds
        self._tag = "{" + prefix + "}"
        self._timeout = timeout
        self._client = connect(url, timeout)
        self._put = self._client.register_script(_PUT)
        self._delete = self._client.register_script(_DELETE)

    def __repr__(self) -> str:
        return f"<RedisResponses {self._tag}>"

    def _key(self, kind: str, name: str = "") -> str:
        return f"{self._tag}:responses:{kind}{name}"

    def _call(self, awaitable: Any) -> Any:
        return bounded(awaitable, self._timeout, self.url)

    def _meta(self) -> list[str]:
        return [self._key("order"), self._key("sizes"), self._key("total")]

    async def put(self, record: Stored, now: float) -> None:
        body = record.encode()
        items = record.item_ids()
        bounds = self.bounds
        keys = [*self._meta(), self._key("body:", record.id)]
        keys += [self._key("item:", item) for item in items]
        args: list[bytes | str | int | float] = [
            record.id,
            body,
            len(body),
            max(1, int(bounds.max_age * 1000)),
            record.created,
            now - bounds.max_age,
            bounds.max_responses,
            bounds.max_bytes,
            f"{record.owner}|{record.id}",
        ]
        await self._call(self._put(keys=keys, args=args))

    async def get(self, response_id: str, owner: str, now: float) -> Stored | None:
        raw = await self._call(self._client.get(self._key("body:", response_id)))
        found = None if raw is None else Stored.decode(response_id, raw)
        return found if found is not None and found.owner == owner else None

    async def holding(self, item_id: str, owner: str, now: float) -> Stored | None:
        raw = await self._call(self._client.get(self._key("item:", item_id)))
        if raw is None:
            return None
        held_by, _, response_id = raw.rpartition("|")
        if held_by != owner:
            return None
        return await self.get(response_id, owner, now)

    async def delete(self, response_id: str, owner: str) -> bool:
        if await self.get(response_id, owner, 0.0) is None:
            return False
        keys = [*self._meta(), self._key("body:", response_id)]
        return bool(await self._call(self._delete(keys=keys, args=[response_id])))

    async def aclose(self) -> None:
        await self._client.aclose()
