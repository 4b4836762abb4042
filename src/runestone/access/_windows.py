"""Time windows for limits and budgets, as epoch seconds (UTC).

A counter is kept in buckets. A calendar window (this UTC day, this month) is one bucket
that starts where the window starts; a rolling window (the last 24 hours) is the sum of
``ROLLING_BUCKETS`` buckets, so it moves on in steps of 1/24 of its length and counts a
little more than the exact window, never less: a rolling budget errs on the safe side.
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass

from runestone.aliases._keys import Period

ROLLING_BUCKETS = 24

_LENGTH = {
    "minute": 60.0,
    "hour": 3600.0,
    "day": 86400.0,
    "week": 7 * 86400.0,
    "month": 30 * 86400.0,
}


@dataclass(frozen=True, slots=True)
class Window:
    """Where ``now`` falls: its bucket, the earliest bucket that counts, when it resets."""

    bucket: float  # the start of the bucket that this moment's amounts go to
    since: float  # buckets starting at or after this count towards the window
    resets: float  # when what is counted now stops counting (all of it, or a step)
    keep: float  # seconds a bucket must be kept after its start


_CURRENT: dict[tuple[str, bool], Window] = {}


def window(period: Period, rolling: bool, now: float) -> Window:
    # Every request asks for the same few windows: the last answer holds until it resets.
    found = _CURRENT.get((period, rolling))
    if found is not None and found.bucket <= now < found.resets:
        return found
    found = _CURRENT[(period, rolling)] = _window(period, rolling, now)
    return found


def _window(period: Period, rolling: bool, now: float) -> Window:
    if rolling:
        length = _LENGTH[period]  # a rolling month is 30 days
        step = length / ROLLING_BUCKETS
        bucket = now - now % step
        since = bucket - step * (ROLLING_BUCKETS - 1)
        return Window(bucket, since, bucket + step, length + step)
    if period == "month":
        day = dt.datetime.fromtimestamp(now, dt.UTC)
        start = calendar.timegm((day.year, day.month, 1, 0, 0, 0))
        following = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
        end = calendar.timegm((*following, 1, 0, 0, 0))
        return Window(float(start), float(start), float(end), float(end - start))
    length = _LENGTH[period]
    # Weeks start on Monday: the epoch was a Thursday, three days after one.
    offset = 3 * 86400.0 if period == "week" else 0.0
    begins = now - (now + offset) % length
    return Window(begins, begins, begins + length, length)


def iso(epoch: float) -> str:
    return (
        dt.datetime.fromtimestamp(epoch, dt.UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z")
    )
