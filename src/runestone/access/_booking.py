"""What a finished request books: its tokens and cost, as the provider reported them or,
when it never said, the request's worst case; and the name its ledger row goes under.

Money is never booked as zero because something was unknown: a request that got an
answer (whole or streamed) and whose usage is missing, invalid or unpriced books its
worst case (``Bound.cost``), marked as estimated. A request that got no answer (refused,
or every attempt failed) books nothing: providers do not bill for refusals and errors.
"""

from __future__ import annotations

from dataclasses import dataclass

from runestone.access._worst_case import Bound
from runestone.aliases import AliasTable
from runestone.pricing import Price, packaged_prices

#: The ledger row of a model the alias file does not name nor price: clients choose
#: ``provider:model`` strings freely, and each name would be a row per key and day.
OTHER = "other"


@dataclass(frozen=True, slots=True)
class Spent:
    """What one request used, as its trace found it."""

    #: The target that answered (``provider:model``), or the name the client asked for.
    target: str
    #: Whether an upstream answered: what it used costs money, known or not.
    charged: bool
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost: float | None = None
    #: The answer came from two targets (a cut stream completed by another): the first
    #: one's usage is never reported.
    partial: bool = False


NOTHING = Spent("-", charged=False)


@dataclass(frozen=True, slots=True)
class Booking:
    input_tokens: int
    output_tokens: int
    usd: float
    estimated: bool

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def booking(spent: Spent, bound: Bound, price: Price | None, default: float) -> Booking | None:
    """What to book for ``spent``, or None when nothing was charged."""
    if not spent.charged:
        return None
    given, taken, cost = spent.input_tokens, spent.output_tokens, spent.cost
    worst_in, worst_out = bound.input_tokens, bound.output_tokens or 0
    if spent.partial:  # the first target's worst case, and what the second reported
        worst = bound.cost(price, default) + (cost or 0.0)
        return Booking(worst_in + (given or 0), worst_out + (taken or 0), worst, True)
    if given is None or taken is None:
        return Booking(worst_in, worst_out, bound.cost(price, default), True)
    if cost is None:  # tokens known, but no price for the target
        return Booking(given, taken, bound.cost(None, default), True)
    return Booking(given, taken, cost, False)


class LedgerNames:
    """The ledger's model names under one alias table: a target the file names or a
    model with a price keeps its name; any other is ``other``."""

    __slots__ = ("_named", "_table")

    def __init__(self) -> None:
        self._table: AliasTable | None = None
        self._named: frozenset[str] = frozenset()

    def __call__(self, target: str, table: AliasTable) -> str:
        if table is not self._table:
            aliases = table.aliases.values()
            named = {str(t) for a in aliases for t in a.every_target}
            self._named, self._table = frozenset(named | set(table.prices)), table
        if target in self._named or target in packaged_prices():
            return target
        return OTHER
