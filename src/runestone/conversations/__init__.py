"""The response store: what a Responses request and its answer were, for later turns.

A client that sends ``store: true`` (the Responses API's default) may later name the
response (``previous_response_id``), refer to one of its items (``item_reference``),
read it (``GET /v1/responses/{id}``, ``.../input_items``) or delete it. The gateway
keeps each stored response, whichever target answered it, so that all of that works on
every target, the bridged ones included, and across a failover between them.

A response belongs to the client key that made it (the gateway's service principal for
requests without one): another key is told it does not exist. The store is bounded by
count, bytes and age, oldest first. It lives beside the state of limits and budgets:
SQLite on one host, Redis across replicas (written before the answer's last event goes
out, so the next turn finds it on any replica).
"""

from __future__ import annotations

from pathlib import Path

from runestone.conversations._conversation import Conversations, Pending
from runestone.conversations._store import Bounds, ResponseStore, Stored


def open_response_store(
    *, redis_url: str | None, prefix: str, state_path: Path, bounds: Bounds
) -> ResponseStore:
    """Redis at ``redis_url`` when given, else a SQLite file beside ``state_path``."""
    if redis_url:
        from runestone.conversations._redis import RedisResponses

        return RedisResponses(redis_url, prefix=prefix, bounds=bounds)
    from runestone.conversations._sqlite import SQLiteResponses

    return SQLiteResponses(state_path.with_name("responses.sqlite3"), bounds=bounds)


__all__ = ["Bounds", "Conversations", "Pending", "ResponseStore", "Stored", "open_response_store"]
