"""A Responses request's conversation: filled in from the store, and kept after.

``Conversations.prepare`` resolves ``previous_response_id`` (the earlier response's
conversation and answer come first) and ``item_reference`` items (each replaced by the
item) from the caller's own stored responses; what it cannot find is left as sent, for
a target with the Responses API to resolve (a bridged one refuses it by name).
``Conversations.keep`` stores the answer with the conversation that led to it, unless
the request said ``store: false``.

Items sent again have their ids and statuses left off (a provider that did not store
them would look them up, and fail), and reasoning left out unless it is the encrypted
kind a stateless request may carry.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runestone.access import StateError
from runestone.conversations._store import ResponseStore, Stored
from runestone.errors import error_for

log = logging.getLogger("runestone.conversations")


@dataclass(slots=True)
class Pending:
    """What to store once the answer is in: who asked, and the conversation so far."""

    owner: str
    conversation: list[dict[str, Any]]


def _as_items(given: object) -> list[dict[str, Any]]:
    if isinstance(given, str):
        return [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": given}]}
        ]
    return [item for item in given if isinstance(item, dict)] if isinstance(given, list) else []


def _resent(item: dict[str, Any]) -> dict[str, Any] | None:
    """A stored item as a later request carries it."""
    if item.get("type") == "reasoning":
        return item if item.get("encrypted_content") else None
    return {k: v for k, v in item.items() if k not in ("id", "status")}


def _with_id(item: dict[str, Any]) -> dict[str, Any]:
    if isinstance(item.get("id"), str):
        return item
    prefix = "msg" if item.get("type", "message") == "message" else "item"
    return {"id": f"{prefix}_{os.urandom(12).hex()}", **item}


class Conversations:
    """The response store of one gateway, opened when first needed."""

    def __init__(
        self, factory: Callable[[], ResponseStore], clock: Callable[[], float] = time.time
    ):
        self._factory = factory
        self._store: ResponseStore | None = None
        self.clock = clock

    @property
    def store(self) -> ResponseStore:
        if self._store is None:
            self._store = self._factory()
        return self._store

    async def prepare(
        self, body: dict[str, Any], owner: str
    ) -> tuple[dict[str, Any], Pending | None]:
        """The request with its references resolved, and what to keep of it (None when
        the client asked for nothing to be stored)."""
        given = body.get("input")
        previous = body.get("previous_response_id")
        referring = isinstance(given, list) and any(
            isinstance(i, dict) and i.get("type") == "item_reference" for i in given
        )
        keep = body.get("store") is not False
        if not (keep or referring or isinstance(previous, str)):
            return body, None
        now = self.clock()
        try:
            history: list[dict[str, Any]] = []
            if isinstance(previous, str):
                earlier = await self.store.get(previous, owner, now)
                if earlier is not None:
                    history = [*earlier.input, *(earlier.response.get("output") or [])]
            items = _as_items(given)
            found: list[dict[str, Any] | None] = [None] * len(items)
            if referring:
                found = [await self._resolve(item, owner, now) for item in items]
        except StateError as exc:
            raise error_for(
                "state_unavailable", f"the response store cannot be read: {exc}"
            ) from None
        conversation = [*history, *(f or i for f, i in zip(found, items, strict=True))]
        if history or any(found):
            sent = [r for r in map(_resent, history) if r is not None]
            sent += [i if f is None else _resent(f) or i for f, i in zip(found, items, strict=True)]
            body = dict(body)
            if history:
                del body["previous_response_id"]
            body["input"] = sent
        return body, Pending(owner, [_with_id(i) for i in conversation]) if keep else None

    async def _resolve(self, item: dict[str, Any], owner: str, now: float) -> dict[str, Any] | None:
        """The stored item an ``item_reference`` names, if the caller has it."""
        if item.get("type") != "item_reference" or not isinstance(item.get("id"), str):
            return None
        holder = await self.store.holding(item["id"], owner, now)
        return holder.find_item(item["id"]) if holder is not None else None

    async def keep(self, pending: Pending, response: object) -> None:
        """Store an answer (a response object) with its conversation; a store that
        cannot be written costs the later turns, never this answer."""
        if not isinstance(response, dict) or not isinstance(response.get("id"), str):
            return
        record = Stored(response["id"], pending.owner, self.clock(), pending.conversation, response)
        try:
            await self.store.put(record, record.created)
        except StateError as exc:
            log.warning("response %s not stored: %s", record.id, exc)

    async def aclose(self) -> None:
        if self._store is not None:
            await self._store.aclose()
