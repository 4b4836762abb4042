"""Circuit breakers, one per target (provider + model + base URL), per process.

A breaker opens after ``failures`` consecutive failures, or when the failure rate over the
last ``window`` calls reaches ``failure_rate``; while open its target is skipped. After
``cooldown`` seconds it half-opens and lets ``half_open_trials`` requests through: one
success closes it, one failure opens it again for another cool-down.

Only upstream faults count as failures (5xx, 429, 529, timeouts, refused connections,
broken streams); a client error proves the upstream alive. State lives in this object;
sharing it between processes (Redis, say) means putting ``BreakerState`` in a store.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

State = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failures: int = 5
    failure_rate: float = 0.5
    window: int = 20
    min_calls: int = 10
    cooldown: float = 30.0
    half_open_trials: int = 1


class CircuitBreaker:
    __slots__ = (
        "_clock",
        "_outcomes",
        "config",
        "consecutive",
        "in_flight",
        "key",
        "opened_at",
        "state",
        "trials",
    )

    def __init__(
        self,
        key: str,
        config: BreakerConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.key = key
        self.config = config
        self._clock = clock
        self.state: State = "closed"
        self.consecutive = 0
        self.opened_at = 0.0
        self.trials = 0
        self.in_flight = 0  # for the least_busy strategy
        self._outcomes: deque[bool] = deque(maxlen=config.window)

    def __repr__(self) -> str:
        retry = f" retry_in={self.retry_in():.0f}s" if self.state == "open" else ""
        return (
            f"<CircuitBreaker {self.key} {self.state.upper()} failures={self.consecutive}{retry}>"
        )

    def allow(self) -> bool:
        """Whether a request may go to this target now (claims a half-open trial)."""
        if self.state == "closed":
            return True
        if self.state == "open":
            if self._clock() - self.opened_at < self.config.cooldown:
                return False
            self.state = "half_open"
            self.trials = 0
        if self.trials < self.config.half_open_trials:
            self.trials += 1
            return True
        return False

    def retry_in(self) -> float:
        if self.state != "open":
            return 0.0
        return max(self.opened_at + self.config.cooldown - self._clock(), 0.0)

    def record_success(self) -> None:
        self.consecutive = 0
        self._outcomes.append(True)
        if self.state == "half_open":
            self.state = "closed"
            self._outcomes.clear()

    def record_failure(self) -> None:
        self.consecutive += 1
        self._outcomes.append(False)
        if self.state == "half_open" or self._should_open():
            self.state = "open"
            self.opened_at = self._clock()
            self._outcomes.clear()

    def _should_open(self) -> bool:
        if self.consecutive >= self.config.failures:
            return True
        calls = len(self._outcomes)
        if calls < self.config.min_calls:
            return False
        failed = calls - sum(self._outcomes)
        return failed / calls >= self.config.failure_rate

    def snapshot(self) -> dict[str, object]:
        return {
            "target": self.key,
            "state": self.state,
            "consecutive_failures": self.consecutive,
            "retry_in": round(self.retry_in(), 1),
            "in_flight": self.in_flight,
        }


class Lease:
    """A place in a breaker's in-flight count (what ``least_busy`` orders by), given
    back exactly once, whichever way the attempt or the stream holding it ends."""

    __slots__ = ("_breaker",)

    def __init__(self, breaker: CircuitBreaker) -> None:
        breaker.in_flight += 1
        self._breaker: CircuitBreaker | None = breaker

    def __repr__(self) -> str:
        held = self._breaker.key if self._breaker is not None else "released"
        return f"<Lease {held}>"

    def release(self) -> None:
        breaker, self._breaker = self._breaker, None
        if breaker is not None:
            breaker.in_flight -= 1


class Breakers:
    """Every target's breaker in this process, created on first use.

    Client-chosen ``provider:model`` names make targets without end, so the table is
    bounded: past ``limit`` breakers, the oldest idle closed ones (nothing to remember:
    no failures, nothing in flight) are dropped.
    """

    def __init__(self, config: BreakerConfig | None = None, *, limit: int = 1000) -> None:
        self.config = config or BreakerConfig()
        self.limit = limit
        self._by_key: dict[str, CircuitBreaker] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, key: str) -> CircuitBreaker:
        breaker = self._by_key.get(key)
        if breaker is None:
            if len(self._by_key) >= self.limit:
                self._evict()
            breaker = self._by_key[key] = CircuitBreaker(key, self.config)
        return breaker

    def _evict(self) -> None:
        keep = self.limit * 9 // 10  # make room for a while, not for one
        idle = [
            key
            for key, b in self._by_key.items()
            if b.state == "closed" and b.in_flight == 0 and b.consecutive == 0
        ]
        for key in idle[: max(len(self._by_key) - keep, 0)]:
            del self._by_key[key]

    def snapshot(self) -> list[dict[str, object]]:
        return [breaker.snapshot() for breaker in self._by_key.values()]
