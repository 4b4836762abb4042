"""The keyring in Redis, beside the limits (same URL and prefix, same hash tag).

Records are one hash (``{prefix}:keyring``); each put bumps a counter and notes the
record's name in a sorted set by version, in one script, so that a replica asks only
for what changed since the version it has. The audit log is a stream trimmed to
``MAX_AUDIT_ENTRIES``; an alert's claim is a ``SET NX`` with its window's expiry.
"""

from __future__ import annotations

import contextlib
from typing import Any

from runestone.access._redis import bounded, connect
from runestone.keyring._store import MAX_AUDIT_ENTRIES, Changes, page_of

#: Changes remembered by name; a replica further behind reads every record.
_CHANGES_KEPT = 10_000

# KEYS: records hash, version counter, changes zset. ARGV: name, body, create (1/0).
_PUT = """
if ARGV[3] == '1' and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local version = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[3], version, ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -1 - tonumber(ARGV[4]))
return version
"""


class RedisKeyring:
    name = "redis"

    def __init__(self, url: str, *, prefix: str = "runestone", timeout: float = 1.0) -> None:
        self.url = url
        tag = "{" + prefix + "}"
        self._records = f"{tag}:keyring"
        self._version = f"{tag}:keyring:version"
        self._changes = f"{tag}:keyring:changes"
        self._audit = f"{tag}:audit"
        self._claims = f"{tag}:claim:"
        self._timeout = timeout
        self._client = connect(url, timeout)
        self._put = self._client.register_script(_PUT)

    def __repr__(self) -> str:
        return f"<RedisKeyring {self._records}>"

    def _call(self, awaitable: Any) -> Any:
        return bounded(awaitable, self._timeout, self.url)

    async def version(self) -> int:
        return int(await self._call(self._client.get(self._version)) or 0)

    async def changes(self, since: int) -> Changes:
        pipe = self._client.pipeline(transaction=True)
        pipe.get(self._version)
        pipe.zrangebyscore(self._changes, f"({since}", "+inf", withscores=True)
        pipe.zrange(self._changes, 0, 0, withscores=True)
        version_text, changed, oldest = await self._call(pipe.execute())
        version = int(version_text or 0)
        complete = since == 0 or (bool(oldest) and oldest[0][1] > since + 1)
        if complete:
            everything = await self._call(self._client.hgetall(self._records))
            return Changes(version, [(n, b.encode()) for n, b in everything.items()], True)
        names = [name for name, _ in changed]
        if not names:
            return Changes(version, [])
        bodies = await self._call(self._client.hmget(self._records, names))
        found = [(n, b.encode()) for n, b in zip(names, bodies, strict=True) if b is not None]
        return Changes(version, found)

    async def put(self, name: str, body: bytes, *, create: bool) -> int | None:
        keys = [self._records, self._version, self._changes]
        args = [name, body.decode(), "1" if create else "0", str(_CHANGES_KEPT)]
        version = int(await self._call(self._put(keys=keys, args=args)))
        return version or None

    async def append_audit(self, entry: bytes) -> None:
        await self._call(
            self._client.xadd(
                self._audit, {"e": entry.decode()}, maxlen=MAX_AUDIT_ENTRIES, approximate=True
            )
        )

    async def audit(
        self, before: str | None, limit: int
    ) -> tuple[list[tuple[str, bytes]], str | None]:
        top = f"({before}" if before else "+"
        rows = await self._call(self._client.xrevrange(self._audit, top, "-", count=limit + 1))
        return page_of([(seq, fields["e"].encode()) for seq, fields in rows], limit)

    async def claim(self, name: str, seconds: float) -> bool:
        ttl = max(1, int(seconds))
        return bool(await self._call(self._client.set(self._claims + name, "1", nx=True, ex=ttl)))

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):  # closing must not fail a shutdown
            await self._client.aclose()
