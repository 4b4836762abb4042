"""What a request cost: tokens as the provider reported them, times a price table.

Prices are USD per million tokens. The packaged ``prices.yaml`` holds list prices; the
alias file's ``prices:`` section overrides or adds entries, hot-reloaded with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

PACKAGED_PRICES = Path(__file__).parent / "prices.yaml"


@dataclass(frozen=True, slots=True)
class Price:
    input: float
    output: float
    cached_input: float | None = None
    #: Tokens written to a prompt cache (Anthropic's: a quarter above input); unset: input.
    cache_write: float | None = None

    @property
    def cache_write_rate(self) -> float:
        return self.input if self.cache_write is None else self.cache_write

    def cost(
        self,
        input_tokens: int | None,
        output_tokens: int | None,
        cached: int = 0,
        written: int = 0,
    ) -> float:
        given, taken = input_tokens or 0, output_tokens or 0
        cached = min(cached, given)
        written = min(written, given - cached)
        cached_rate = self.input if self.cached_input is None else self.cached_input
        write_rate = self.cache_write_rate
        plain = given - cached - written
        return (
            plain * self.input + cached * cached_rate + written * write_rate + taken * self.output
        ) / 1_000_000


def price_from(value: Mapping[str, object]) -> Price | None:
    """A ``Price`` from a {input, output, cached_input, cache_write} map, or None if it is
    not one."""
    numbers = {}
    for key in ("input", "output", "cached_input", "cache_write"):
        raw = value.get(key)
        if raw is None and key in ("cached_input", "cache_write"):
            continue
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            return None
        if not 0 <= raw < math.inf:  # a price of inf or nan would poison every sum
            return None
        numbers[key] = float(raw)
    return Price(**numbers)


@cache
def packaged_prices() -> Mapping[str, Price]:
    data = yaml.safe_load(PACKAGED_PRICES.read_text()) or {}
    prices = {}
    for target, value in data.items():
        price = price_from(value) if isinstance(value, dict) else None
        if price is None:
            raise ValueError(f"{PACKAGED_PRICES}: bad price for {target!r}")
        prices[str(target)] = price
    return prices
