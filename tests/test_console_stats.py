"""The console's running window totals agree with counting the requests again."""

from __future__ import annotations

import random

import pytest

from runestone.console._stats import SLOT_SECONDS, WINDOWS, ConsoleStats, percentile
from runestone.telemetry.events import RequestFinished


def finished(n: int, failed: bool) -> RequestFinished:
    return RequestFinished(
        request_id=f"req_{n}",
        route="chat",
        alias=f"alias{n % 3}",
        provider="openai",
        model="gpt-4",
        status=502 if failed else 200,
        code="upstream_server_error" if failed else "",
        duration=0.01 * (1 + n % 7),
        outcome="error" if failed else "complete",
        input_tokens=3,
        output_tokens=4,
        cost=0.5,
    )


def test_window_totals_match_a_recount_as_time_goes_by() -> None:
    clock = [1_000_000.0]
    stats = ConsoleStats(clock=lambda: clock[0])
    rng = random.Random(7)
    seen: list[tuple[float, bool, str]] = []
    for n in range(3000):
        # Bursts and long quiet stretches (up to 20 minutes), over two and a half hours.
        clock[0] += rng.choice([0.1, 1, 5, 30, 300, 1200]) if n % 25 == 0 else rng.random()
        failed = rng.random() < 0.1
        stats(finished(n, failed))
        seen.append((clock[0], failed, f"alias{n % 3}"))
        if n % 97 == 0:
            for minutes in WINDOWS:
                current = int(clock[0]) // SLOT_SECONDS
                first = current - minutes * 60 // SLOT_SECONDS
                inside = [s for s in seen if int(s[0]) // SLOT_SECONDS > first]
                tally = stats.window(minutes)
                assert tally.requests == len(inside), (n, minutes)
                assert tally.errors == sum(1 for s in inside if s[1])
                assert tally.models.get("openai:gpt-4", [0, 0, 0, 0])[3] == len(inside)
                per_alias = {a: sum(1 for s in inside if s[2] == a) for a in ("alias0", "alias1")}
                for alias, count in per_alias.items():
                    series = tally.series.get((alias, "openai"))
                    assert (series.requests if series else 0) == count
                    if series:
                        assert sum(series.latency.values()) == count


def test_percentiles_are_within_a_bucket() -> None:
    stats = ConsoleStats(clock=lambda: 5000.0)
    for n in range(100):
        stats(finished(n, False))  # durations 10..70 ms
    series = stats.window(5).series[("alias0", "openai")]
    p50 = percentile(series.latency, 0.5)
    assert p50 is not None and 0.03 <= p50 <= 0.04 * 1.2
    assert percentile({}, 0.5) is None


def test_failures_keep_ids_and_codes_only() -> None:
    stats = ConsoleStats()
    stats(finished(1, True))
    (failure,) = stats.failures
    assert failure.code == "upstream_server_error" and failure.target == "openai:gpt-4"
    with pytest.raises(AttributeError):
        failure.prompt  # type: ignore[attr-defined]  # noqa: B018
