"""The console's running window totals agree with counting the requests again."""

from __future__ import annotations

import random

import pytest

from runestone.aliases import parse_alias_file
from runestone.console._stats import SLOT_SECONDS, WINDOWS, ConsoleStats, percentile
from runestone.errors import error_for
from runestone.telemetry import RequestTrace, Telemetry
from runestone.telemetry.tallies import Tallies


def finish(tallies: Tallies, n: int, failed: bool) -> None:
    """Count request ``n`` as its trace does."""
    kind = (
        "chat",
        f"alias{n % 3}",
        "openai",
        "gpt-4",
        502 if failed else 200,
        "upstream_server_error" if failed else "",
        "-",
        False,
        "error" if failed else "complete",
    )
    duration = 0.01 * (1 + n % 7)
    tallies.finished(kind, False, duration, duration / 10, None, 3, 4, 0.5, 1)


def test_window_totals_match_a_recount_as_time_goes_by() -> None:
    clock = [1_000_000.0]
    tallies = Tallies(clock=lambda: clock[0])
    stats = ConsoleStats(tallies)
    rng = random.Random(7)
    seen: list[tuple[float, bool, str]] = []
    for n in range(3000):
        # Bursts and long quiet stretches (up to 20 minutes), over two and a half hours.
        clock[0] += rng.choice([0.1, 1, 5, 30, 300, 1200]) if n % 25 == 0 else rng.random()
        failed = rng.random() < 0.1
        finish(tallies, n, failed)
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
    tallies = Tallies(clock=lambda: 5000.0)
    stats = ConsoleStats(tallies)
    for n in range(100):
        finish(tallies, n, False)  # durations 10..70 ms
    series = stats.window(5).series[("alias0", "openai")]
    p50 = percentile(series.latency, 0.5)
    assert p50 is not None and 0.03 <= p50 <= 0.04 * 1.2
    assert percentile({}, 0.5) is None


def test_failures_keep_ids_and_codes_only() -> None:
    telemetry = Telemetry()
    stats = ConsoleStats(telemetry.tallies)
    table = parse_alias_file(b"aliases:\n  smart: openai:gpt-4\n", "aliases.yaml")
    trace = RequestTrace(telemetry, request_id="req_1", route="chat", table=table)
    trace.model = "smart"
    assert stats.in_flight == 1
    error = error_for("upstream_server_error", "a secret answer", provider="openai")
    error.target = "openai:gpt-4"
    trace.failed(error, stream=False)
    assert stats.in_flight == 0
    (failure,) = stats.failures
    assert failure.code == "upstream_server_error" and failure.target == "openai:gpt-4"
    assert failure.alias == "smart" and failure.request_id == "req_1"
    assert stats.window(5).codes == {"upstream_server_error": 1}
    with pytest.raises(AttributeError):
        failure.prompt  # type: ignore[attr-defined]  # noqa: B018
