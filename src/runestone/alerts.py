"""Budget alerts: a webhook call when a key's or team's budget passes a threshold of
its use (by default 50%, 80% and 100%), once per budget window and threshold across
every replica, and each budget's used share for the Prometheus gauge.

The request path only notes a crossing (``__call__``: a few comparisons, and a put on a
bounded queue that drops the oldest when full); a task of its own claims the alert in
the shared store (so one replica sends it) and posts it to each webhook, retrying with
backoff. A webhook that is down costs no request anything.

Webhooks come from ``RUNESTONE_ALERT_WEBHOOKS``: comma-separated URLs, each sent a JSON
object, or Slack's ``{"text": ...}`` when prefixed ``slack:``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from runestone.access._limits import Limit
from runestone.access._windows import iso

log = logging.getLogger("runestone.alerts")

MAX_QUEUED = 1000
#: Tries per webhook, and the first wait between them (doubled each time).
TRIES = 5
FIRST_WAIT = 0.5
_TIMEOUT = aiohttp.ClientTimeout(total=10)
_SHARES_KEPT = 10_000


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str
    slack: bool = False


def parse_webhooks(text: str) -> tuple[Webhook, ...]:
    """``RUNESTONE_ALERT_WEBHOOKS``'s value; ValueError when an entry is no http(s) URL."""
    hooks = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        slack = entry.startswith("slack:")
        url = entry[6:] if slack else entry
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{entry!r} is not an http(s) URL (prefix slack: for Slack)")
        hooks.append(Webhook(url, slack))
    return tuple(hooks)


@dataclass(frozen=True, slots=True)
class BudgetAlert:
    owner: str  # key:<id> or team:<id>
    budget: str  # usd/day, usd/month~ (rolling)
    threshold: float
    share: float
    limit_usd: float
    window_start: float
    resets: float
    #: A request was refused for it: no further request fits, whatever the share.
    exhausted: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "type": "budget_alert",
            "owner": self.owner,
            "budget": self.budget,
            "threshold_percent": round(self.threshold * 100, 4),
            "used_percent": round(self.share * 100, 2),
            "limit_usd": self.limit_usd,
            "exhausted": self.exhausted,
            "window_start": iso(self.window_start),
            "resets": iso(self.resets),
        }

    def text(self) -> str:
        full = ", and a request no longer fits" if self.exhausted else ""
        return (
            f"Runestone: {self.owner} has used {self.share:.0%} of its ${self.limit_usd:g} "
            f"budget {self.budget}{full} (alert at {self.threshold:.0%}); it resets at "
            f"{iso(self.resets)}"
        )


def owner_of(counter: str) -> tuple[str, str] | None:
    """``k:<id>:usd/day`` as ("key:<id>", "usd/day"); None for an end user's budget."""
    kind, _, rest = counter.partition(":")
    name, _, budget = rest.rpartition(":")
    if kind == "k":
        return f"key:{name}", budget
    if kind == "t":
        return f"team:{name}", budget
    return None


class BudgetAlerts:
    """``Access.on_budget``: note crossings; ``run`` sends them."""

    def __init__(
        self, webhooks: tuple[Webhook, ...], claim: Callable[[str, float], Awaitable[bool]]
    ) -> None:
        self.webhooks = webhooks
        self._claim = claim
        self._queue: collections.deque[tuple[str, float, BudgetAlert]] = collections.deque(
            maxlen=MAX_QUEUED
        )
        self._ready = asyncio.Event()
        self._noted: set[tuple[str, float, float]] = set()
        #: Each budget's used share (spent and reserved), by (owner, budget).
        self.shares: dict[tuple[str, str], float] = {}

    def gauge(self) -> Iterable[tuple[str, str, float]]:
        return [(owner, budget, share) for (owner, budget), share in self.shares.items()]

    def __call__(
        self,
        limit: Limit,
        share: float,
        window_start: float,
        keep: float,
        resets: float,
        exhausted: bool = False,
    ) -> None:
        found = owner_of(limit.counter)
        if found is None:
            return
        if len(self.shares) >= _SHARES_KEPT and found not in self.shares:
            self.shares.clear()
        self.shares[found] = share
        for threshold in limit.alerts:
            noted = (limit.counter, window_start, threshold)
            if (share + 1e-9 < threshold and not exhausted) or noted in self._noted:
                continue
            if len(self._noted) >= _SHARES_KEPT:
                self._noted.clear()  # the store's claim still says whether it was sent
            self._noted.add(noted)
            alert = BudgetAlert(
                *found, threshold, share, limit.limit, window_start, resets, exhausted
            )
            name = f"{limit.counter}:{window_start:.0f}:{threshold:g}"
            if len(self._queue) == self._queue.maxlen:
                log.error("budget alerts: queue full, the oldest alert is dropped")
            self._queue.append((name, keep, alert))
            self._ready.set()

    async def run(self) -> None:
        """Send what is noted, until cancelled."""
        async with aiohttp.ClientSession(timeout=_TIMEOUT) as session:
            while True:
                await self._ready.wait()
                while self._queue:
                    name, keep, alert = self._queue.popleft()
                    await self._send(session, name, keep, alert)
                self._ready.clear()

    async def _send(
        self, session: aiohttp.ClientSession, name: str, keep: float, alert: BudgetAlert
    ) -> None:
        try:
            if not await self._claim(f"alert:{name}", keep):
                return  # another replica has it
        except Exception as exc:  # the store is down: better twice than never
            log.warning("budget alerts: cannot claim %s (%s); sending it anyway", name, exc)
        log.warning("budget alert: %s", alert.text())
        for hook in self.webhooks:
            body = {"text": alert.text()} if hook.slack else alert.as_json()
            await _post(session, hook, body)


async def _post(session: aiohttp.ClientSession, hook: Webhook, body: dict[str, Any]) -> None:
    wait = FIRST_WAIT
    where = urlsplit(hook.url).hostname  # its path or query may hold a token (Slack's do)
    for attempt in range(1, TRIES + 1):
        try:
            async with session.post(hook.url, json=body) as answer:
                if answer.status < 300:
                    return
                problem = f"HTTP {answer.status}"
                if 400 <= answer.status < 500 and answer.status not in (408, 429):
                    break  # the webhook refuses it: asking again cannot help
        except (aiohttp.ClientError, TimeoutError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if attempt < TRIES:
            await asyncio.sleep(wait)
            wait *= 2
    log.error("budget alerts: %s did not take the alert (%s)", where, problem)
