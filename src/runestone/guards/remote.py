"""Guards that ask a service: a webhook of one's own, or a provider's moderation model.

The webhook gets ``{"guard", "stage", "texts", "model", "key", "request_id"}`` and answers
``{"action": "allow" | "deny" | "replace", "texts": [...], "reason": "..."}`` (``texts``,
one per text sent, with ``replace``). Anything else (a timeout, a refused connection, a
status other than 200, an answer of another shape) is the guard failing, and its
``on_error`` says whether the text then passes (``open``) or is blocked (``closed``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, NamedTuple

import aiohttp
import orjson

from runestone.aliases import ModerationCheck, WebhookCheck
from runestone.errors import GatewayError

#: The most bytes of a webhook's answer read (a replacement of the texts sent, or less).
MAX_ANSWER = 4 * 1024 * 1024
#: Moderation through a configured provider: (target, texts, timeout) -> one result each.
Moderate = Callable[[str, Sequence[str], float], Awaitable[list[dict[str, Any]]]]


class CheckFailed(Exception):
    """The service could not say (its ``on_error`` decides)."""


class Verdict(NamedTuple):
    action: Literal["allow", "deny", "replace"]
    texts: list[str] | None = None


class Webhooks:
    """One HTTP session for every webhook guard of the process, opened when first used."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def ask(self, check: WebhookCheck, payload: dict[str, Any], count: int) -> Verdict:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        try:
            async with asyncio.timeout(check.timeout):
                async with self._session.post(
                    check.url,
                    data=orjson.dumps(payload),
                    headers={"content-type": "application/json"},
                    allow_redirects=False,
                ) as answer:
                    if answer.status != 200:
                        raise CheckFailed(f"answered {answer.status}")
                    body = await answer.content.read(MAX_ANSWER + 1)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise CheckFailed(type(exc).__name__) from None
        return _verdict(body, count)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _verdict(body: bytes, count: int) -> Verdict:
    if len(body) > MAX_ANSWER:
        raise CheckFailed("answer too large")
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise CheckFailed("answer is not JSON") from None
    action = answer.get("action") if isinstance(answer, dict) else None
    if action in ("allow", "deny"):
        return Verdict(action)
    texts = answer.get("texts") if action == "replace" else None
    if isinstance(texts, list) and len(texts) == count and all(isinstance(t, str) for t in texts):
        return Verdict("replace", texts)
    raise CheckFailed("answer is not allow, deny, or replace with one text per text sent")


async def flagged(moderate: Moderate, check: ModerationCheck, texts: Sequence[str]) -> bool:
    """Whether the moderation model flags any of ``texts`` (in the guard's categories)."""
    try:
        results = await moderate(check.target, texts, check.timeout)
    except (GatewayError, TimeoutError, OSError, ValueError, aiohttp.ClientError) as exc:
        raise CheckFailed(type(exc).__name__) from None
    for result in results:
        if not isinstance(result, dict):
            raise CheckFailed("moderation result is not an object")
        if not check.categories:
            if result.get("flagged") is True:
                return True
            continue
        categories = result.get("categories")
        if isinstance(categories, dict) and any(
            categories.get(name) is True for name in check.categories
        ):
            return True
    return False
