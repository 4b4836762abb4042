"""Where cached answers are kept: one interface, two stores (SQLite on one host, Redis
for several), each bounded in entries and bytes (the oldest go first) and by each
entry's time to live."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson


@dataclass(frozen=True, slots=True)
class CacheBounds:
    max_entries: int = 10_000
    max_bytes: int = 256 * 1024 * 1024

    @property
    def max_entry(self) -> int:
        """The largest one answer may be and still be kept (a quarter of the bytes)."""
        return self.max_bytes // 4


@dataclass(frozen=True, slots=True)
class Entry:
    """One answer as its client received it: JSON, or a whole stream's bytes."""

    content_type: str
    body: bytes
    stream: bool
    target: str
    #: What the answer cost when it was made: what each hit saves.
    cost: float | None
    created: float
    scope: str = ""
    alias: str = ""

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "t": self.content_type,
                "b": self.body.decode(),
                "s": self.stream,
                "target": self.target,
                "cost": self.cost,
                "at": self.created,
                "scope": self.scope,
                "alias": self.alias,
            }
        )

    @classmethod
    def decode(cls, raw: bytes | str) -> Entry | None:
        try:
            data: Any = orjson.loads(raw)
            return cls(
                str(data["t"]),
                str(data["b"]).encode(),
                bool(data["s"]),
                str(data["target"]),
                None if data["cost"] is None else float(data["cost"]),
                float(data["at"]),
                str(data.get("scope", "")),
                str(data.get("alias", "")),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None  # not one of ours: a miss


class CacheStore(Protocol):
    name: str

    async def get(self, key: str, now: float) -> Entry | None: ...

    async def put(self, key: str, entry: Entry, ttl: float, now: float) -> None:
        """Keep ``entry`` for ``ttl`` seconds, dropping the oldest past the bounds."""
        ...

    async def purge(self, scope: str | None, alias: str | None) -> int:
        """Forget the entries of ``scope`` and/or ``alias`` (every entry with neither);
        return how many."""
        ...

    async def aclose(self) -> None: ...
