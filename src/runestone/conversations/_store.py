"""One interface, two stores (SQLite on one host, Redis for many)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson


@dataclass(frozen=True, slots=True)
class Bounds:
    """How much the store keeps: the oldest go first past any of these."""

    max_responses: int = 10_000
    max_bytes: int = 256 * 1024 * 1024
    max_age: float = 30 * 86400.0  # seconds

    @property
    def max_record(self) -> int:
        """The largest one response may be and still be kept (a quarter of the bytes)."""
        return self.max_bytes // 4


@dataclass(frozen=True, slots=True)
class Stored:
    """One stored response: its owner, the conversation before it, and the answer."""

    id: str
    owner: str
    created: float
    #: The conversation's items up to this response (earlier turns included).
    input: list[dict[str, Any]]
    #: The response object, as its client received it.
    response: dict[str, Any]

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "owner": self.owner,
                "created": self.created,
                "input": self.input,
                "response": self.response,
            }
        )

    @classmethod
    def decode(cls, response_id: str, raw: bytes | str) -> Stored | None:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict):
            return None
        return cls(
            response_id,
            str(data.get("owner")),
            float(data.get("created") or 0),
            list(data.get("input") or []),
            dict(data.get("response") or {}),
        )

    def item_ids(self) -> list[str]:
        """The ids of its items, input and output, that a later turn may refer to."""
        items = [*self.input, *(self.response.get("output") or [])]
        return [str(i["id"]) for i in items if isinstance(i, dict) and isinstance(i.get("id"), str)]

    def find_item(self, item_id: str) -> dict[str, Any] | None:
        for item in reversed([*self.input, *(self.response.get("output") or [])]):
            if isinstance(item, dict) and item.get("id") == item_id:
                return item
        return None


class ResponseStore(Protocol):
    name: str

    async def put(self, record: Stored, now: float) -> None:
        """Keep ``record`` (dropping the oldest past the bounds); ``StateError`` if the
        store cannot be reached."""
        ...

    async def get(self, response_id: str, owner: str, now: float) -> Stored | None:
        """The response, if ``owner`` made it and it is still kept."""
        ...

    async def holding(self, item_id: str, owner: str, now: float) -> Stored | None:
        """The latest of ``owner``'s responses that holds the item ``item_id``."""
        ...

    async def delete(self, response_id: str, owner: str) -> bool:
        """Forget the response; False if ``owner`` has no such response."""
        ...

    async def aclose(self) -> None: ...
