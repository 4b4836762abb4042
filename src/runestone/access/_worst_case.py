"""A request's worst case: the most tokens it can use, and what that costs (pure functions).

What a budget reserves before a request goes upstream, and what is booked when a
provider never says what the request used. The rule, for every client format:

- input: every byte of the body is a token (no tokenizer makes more tokens than bytes of
  text), and every image the body names, by URL or inline, ``IMAGE_TOKENS`` more (above
  what any provider we know bills for one image); a file, document or audio clip named
  by reference or inline is bounded by no rule we can apply to its bytes, so each costs
  the default reservation;
- output: the largest of every cap a provider may honour (``max_tokens``,
  ``max_completion_tokens``, ``max_output_tokens``, a reasoning or thinking budget),
  times ``n`` choices; without any cap, the default reservation stands in for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from runestone.aliases import AliasTable, SpecError, Target, parse_spec
from runestone.pricing import Price, packaged_prices

#: Input tokens reserved for one image: OpenAI bills at most about 3,800 for one (its
#: patch-based models), Anthropic about 1,600, Gemini 258.
IMAGE_TOKENS = 6_000
#: Choices a request may ask for (OpenAI allows up to 128).
MAX_CHOICES = 128

_CAPS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_IMAGES = frozenset({"image_url", "image", "input_image"})
_UNBOUNDED = frozenset({"file", "document", "input_file", "input_audio", "audio"})
# A body without these bytes names no image nor file: no need to walk it.
_PART_HINTS = (b"image", b"file", b"document", b"audio")


@dataclass(frozen=True, slots=True)
class Bound:
    """The most a request can use: tokens in, tokens out (None: no cap), and the inputs
    no rule bounds (each counted at the default reservation)."""

    input_tokens: int
    output_tokens: int | None
    unbounded_parts: int = 0

    def cost(self, price: Price | None, default: float) -> float:
        """The request's worst-case cost in USD; ``default`` for what cannot be bounded."""
        if price is None:
            return default * (1 + self.unbounded_parts)
        # Every input token at the dearest rate it can be billed at: written to a cache.
        rate = max(price.input, price.cache_write_rate)
        cost = self.input_tokens * rate / 1_000_000 + self.unbounded_parts * default
        if self.output_tokens is None:
            return cost + default
        return cost + self.output_tokens * price.output / 1_000_000


def worst_case(body: Mapping[str, object], raw: bytes) -> Bound:
    """The bound of a request, from its decoded body and its bytes."""
    images = unbounded = 0
    if any(hint in raw for hint in _PART_HINTS):
        images, unbounded = _count_parts(body)
    return Bound(len(raw) + images * IMAGE_TOKENS, output_cap(body), unbounded)


def output_cap(body: Mapping[str, object]) -> int | None:
    """The most output tokens the request allows (every cap, times its choices)."""
    caps = [body.get(name) for name in _CAPS]
    for nested, field in (("thinking", "budget_tokens"), ("reasoning", "max_tokens")):
        value = body.get(nested)
        if isinstance(value, dict):
            caps.append(value.get(field))
    found = [c for c in caps if isinstance(c, int) and not isinstance(c, bool) and c > 0]
    if not found:
        return None
    n = body.get("n")
    choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
    return max(found) * min(choices, MAX_CHOICES)


def _count_parts(body: Mapping[str, object]) -> tuple[int, int]:
    """(images, unbounded inputs) among the content parts anywhere in the body."""
    images = unbounded = 0
    stack: list[object] = [body.get(name) for name in ("messages", "input", "system")]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            kind = item.get("type")
            if kind in _IMAGES:
                images += 1
            elif kind in _UNBOUNDED:
                unbounded += 1
            stack.extend(value for value in item.values() if isinstance(value, list | dict))
    return images, unbounded


def worst_price(model: str, table: AliasTable) -> Price | None:
    """The highest input and output rates among the targets the name may be sent to."""
    alias = table.match(model)
    targets: Iterable[Target]
    if alias is not None:
        targets = alias.every_target
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
