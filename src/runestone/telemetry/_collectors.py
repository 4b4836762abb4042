"""Gauges read at scrape time from the gateway's own state: breakers and budgets."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class BreakerCollector(Collector):
    """Breaker states, read at scrape time (one process's view)."""

    def __init__(self, breakers: Callable[[], Iterable[dict[str, object]]]) -> None:
        self._breakers = breakers

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "runestone_breaker_state",
            "Circuit breaker per target: 0 closed, 1 half open, 2 open",
            labels=["target"],
        )
        for breaker in self._breakers():
            value = {"closed": 0, "half_open": 1, "open": 2}[str(breaker["state"])]
            family.add_metric([str(breaker["target"])], value)
        yield family


class BudgetCollector(Collector):
    """Each budget's used share (spent and reserved), as its last request left it."""

    def __init__(self, budgets: Callable[[], Iterable[tuple[str, str, float]]]) -> None:
        self._budgets = budgets

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "runestone_budget_used_ratio",
            "Share of each key's and team's budget used in its current window (1 = spent)",
            labels=["owner", "budget"],
        )
        for owner, budget, share in self._budgets():
            family.add_metric([owner, budget], share)
        yield family
