"""A request's limits as store checks, and its worst-case cost (pure functions).

Every key and team limit becomes one ``Check``; the counters are named
``k:<key id>:<limit>`` and ``t:<team id>:<limit>``, so a key's and its team's limits
are checked together, in one atomic step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from runestone.access._store import Check
from runestone.access._windows import window
from runestone.aliases import AliasTable, Limits, SpecError, Target, parse_spec
from runestone.pricing import Price, packaged_prices

#: A parallel-slot refusal: one in flight will soon end.
PARALLEL_RETRY_SECONDS = 1.0


def checks_for(scope: str, limits: Limits, now: float, reserve: float) -> list[Check]:
    """The checks for one key's or team's limits (``scope`` is ``k:id`` or ``t:id``)."""
    checks: list[Check] = []
    if limits.rpm or limits.tpm:
        minute = window("minute", False, now)
        if limits.rpm:
            checks.append(
                Check(
                    f"{scope}:rpm",
                    limits.rpm,
                    1,
                    "count",
                    since=minute.since,
                    bucket=minute.bucket,
                    resets=minute.resets,
                    keep=minute.keep,
                )
            )
        if limits.tpm:
            checks.append(
                Check(
                    f"{scope}:tpm",
                    limits.tpm,
                    1,
                    "level",
                    since=minute.since,
                    bucket=minute.bucket,
                    resets=minute.resets,
                    keep=minute.keep,
                )
            )
    if limits.max_parallel:
        checks.append(
            Check(
                f"{scope}:parallel",
                limits.max_parallel,
                1,
                "lease",
                leases=True,
                resets=now + PARALLEL_RETRY_SECONDS,
            )
        )
    for budget in limits.budgets:
        span = window(budget.per, budget.rolling, now)
        checks.append(
            Check(
                f"{scope}:{budget.name}",
                budget.usd,
                reserve,
                "lease",
                since=span.since,
                bucket=span.bucket,
                leases=True,
                resets=span.resets,
                keep=span.keep,
            )
        )
    return checks


def worst_price(model: str, table: AliasTable) -> Price | None:
    """The highest input and output rates among the targets the name may be sent to."""
    alias = table.match(model)
    targets: Iterable[Target]
    if alias is not None:
        targets = (*alias.targets, *alias.context_fallback)
    else:
        try:
            targets = (parse_spec(model),)
        except SpecError:
            return None
    prices = [price_of(str(target), table.prices) for target in targets]
    if not prices or any(price is None for price in prices):
        return None  # a target without a price: its spend cannot be bounded
    known = [price for price in prices if price is not None]
    return Price(max(p.input for p in known), max(p.output for p in known))


def price_of(spec: str, prices: Mapping[str, Price]) -> Price | None:
    return prices.get(spec) or packaged_prices().get(spec)


def output_cap(body: Mapping[str, object]) -> int | None:
    """The most output tokens the request allows, in any of the three formats."""
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def reservation(
    price: Price | None, body_bytes: int, body: Mapping[str, object], default: float
) -> float:
    """The request's worst-case cost: every byte of the body an input token (no tokenizer
    makes more tokens than bytes of text), and every allowed output token.

    Without a price, or without a cap on output, the configured default stands in for
    the part that cannot be bounded.
    """
    if price is None:
        return default
    cap = output_cap(body)
    input_cost = body_bytes * price.input / 1_000_000
    if cap is None:
        return input_cost + default
    return input_cost + cap * price.output / 1_000_000
