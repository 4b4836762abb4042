"""The breaker's state machine on a fake clock, and the policy keys in the alias file."""

from __future__ import annotations

import pytest

from runestone.aliases import DEFAULT_POLICY, AliasFileError, Policy, parse_alias_file
from runestone.routing.breakers import BreakerConfig, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(**config: float) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(
        "openai:gpt-4o@https://api.openai.com/v1", BreakerConfig(**config), clock
    ), clock  # type: ignore[arg-type]


def test_opens_after_consecutive_failures_and_cools_down() -> None:
    b, clock = breaker(failures=3, cooldown=10)
    for _ in range(2):
        b.record_failure()
    assert b.state == "closed" and b.allow()
    b.record_failure()
    assert b.state == "open"
    assert not b.allow()
    assert repr(b) == (
        "<CircuitBreaker openai:gpt-4o@https://api.openai.com/v1 OPEN failures=3 retry_in=10s>"
    )
    clock.now += 10
    assert b.allow()  # the one half-open trial
    assert b.state == "half_open"
    assert not b.allow()  # no second trial while the first is out
    b.record_success()
    assert b.state == "closed"
    assert b.allow()


def test_a_failed_trial_opens_it_again() -> None:
    b, clock = breaker(failures=1, cooldown=5)
    b.record_failure()
    clock.now += 5
    assert b.allow()
    b.record_failure()
    assert b.state == "open"
    assert b.retry_in() == 5


def test_opens_on_failure_rate() -> None:
    b, _ = breaker(failures=100, failure_rate=0.5, window=10, min_calls=10)
    for i in range(10):
        (b.record_failure if i % 2 else b.record_success)()
    assert b.state == "open"


def test_success_resets_consecutive_failures() -> None:
    b, _ = breaker(failures=3)
    b.record_failure()
    b.record_failure()
    b.record_success()
    b.record_failure()
    assert b.state == "closed"


def parse(text: str):  # type: ignore[no-untyped-def]
    return parse_alias_file(text.encode(), "a.yaml")


def test_policy_keys_and_defaults() -> None:
    table = parse(
        """
defaults: {retries: 1, timeout: 60}
aliases:
  plain: openai:gpt-4o
  tuned:
    strategy: weighted
    retries: 3
    timeout: 30
    first_token_timeout: 5
    idle_timeout: 10
    targets:
      - {target: groq:llama-3.1-8b-instant, weight: 3}
      - {target: together:meta-llama/Llama-3-8b-chat-hf, weight: 1}
"""
    )
    assert table.defaults == Policy(retries=1, timeout=60)
    assert table.get("plain").policy == Policy(retries=1, timeout=60)  # type: ignore[union-attr]
    tuned = table.get("tuned")
    assert tuned is not None
    assert tuned.policy == Policy("weighted", 3, 30, 5, 10)
    assert [t.weight for t in tuned.targets] == [3, 1]


def test_an_alias_without_policy_gets_the_built_in_defaults() -> None:
    assert parse("aliases:\n  a: openai:x\n").get("a").policy == DEFAULT_POLICY  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{strategy: random, targets: [a:b]}", "strategy must be one of fallback, weighted"),
        ("{retries: -1, targets: [a:b]}", "retries must be a whole number from 0 to 10"),
        ("{retries: 2.5, targets: [a:b]}", "retries must be a whole number"),
        ("{timeout: 0, targets: [a:b]}", "timeout must be a positive number of seconds"),
        ("{idle_timeout: soon, targets: [a:b]}", "idle_timeout must be a positive number"),
        ("{targets: [{target: 'a:b', weight: 0}]}", "weight must be a positive number"),
    ],
)
def test_bad_policy_values_name_the_alias_and_line(entry: str, message: str) -> None:
    with pytest.raises(AliasFileError) as caught:
        parse(f"aliases:\n  r: {entry}\n")
    (problem,) = caught.value.problems
    assert problem.line == 2
    assert "alias 'r'" in problem.message
    assert message in problem.message


def test_unknown_key_in_defaults() -> None:
    with pytest.raises(AliasFileError, match="defaults: unknown key 'retry'"):
        parse("defaults: {retry: 1}\naliases: {}\n")


def test_price_arithmetic_with_cached_tokens() -> None:
    from runestone.pricing import Price, packaged_prices

    price = Price(input=2.5, output=10, cached_input=1.25)
    assert price.cost(1_000_000, 100_000, cached=400_000) == pytest.approx(
        0.6 * 2.5 + 0.4 * 1.25 + 0.1 * 10
    )
    assert packaged_prices()["openai:gpt-4o"] == price


def test_bad_prices_in_the_alias_file() -> None:
    with pytest.raises(AliasFileError) as caught:
        parse("aliases: {}\nprices:\n  openai:x: {input: 1}\n  nocolon: {input: 1, output: 2}\n")
    lines = [p.line for p in caught.value.problems]
    assert lines == [3, 4]
