"""The answers to a refused request: the error saying which limit and until when, and
OpenAI's ``x-ratelimit-*`` headers that every answer of a limited key carries."""

from __future__ import annotations

import math
from collections.abc import Mapping

from runestone.access._store import Check, Decision
from runestone.access._windows import iso
from runestone.aliases import KeySpec, TeamSpec
from runestone.errors import GatewayError, error_for


def refusal(decision: Decision, key: KeySpec, team: TeamSpec | None, now: float) -> GatewayError:
    check = decision.refused
    assert check is not None
    owner = f"key {key.id!r}"
    if check.counter.startswith("t:") and team is not None:
        owner = f"team {team.id!r} (of key {key.id!r})"
    elif check.counter.startswith("e:"):
        end_user = check.counter[len(f"e:{key.id}:") :].rpartition(":")[0]
        owner = f"end user {end_user!r} of key {key.id!r}"
    limit = check.counter.rpartition(":")[2]
    wait = max(check.resets - now, 0.0)
    used = decision.used.get(check.counter, 0.0)
    if limit.startswith("usd/"):
        error = error_for(
            "budget_exceeded",
            f"{owner} has spent ${used:.4f} of its ${check.limit:g} budget per "
            f"{limit[4:].rstrip('~')}{' (rolling)' if limit.endswith('~') else ''}, with "
            f"this request's reservation of ${check.amount:.4f} it would go over; the "
            f"budget resets at {iso(check.resets)}",
            retry_after=math.ceil(wait),
        )
        return error
    what = {"rpm": "requests per minute", "tpm": "tokens per minute"}.get(
        limit, "requests in flight"
    )
    error = error_for(
        "rate_limited",
        f"{owner} is at its limit of {check.limit:g} {what}; retry after {math.ceil(wait)}s",
        retry_after=max(math.ceil(wait), 1),
    )
    error.headers = rate_headers(decision.used, (check,), now, refused=True)
    return error


def rate_headers(
    used: Mapping[str, float], checks: tuple[Check, ...], now: float, *, refused: bool = False
) -> list[tuple[bytes, bytes]]:
    """OpenAI's ``x-ratelimit-*`` headers for the tightest requests and tokens limits."""
    requests: tuple[float, Check] | None = None
    tokens: tuple[float, Check] | None = None
    for check in checks:
        mode = check.mode
        if mode == "count":  # requests per minute: this one is counted already
            left = check.limit - used.get(check.counter, 0.0) - (0 if refused else 1)
            if requests is None or left < requests[0]:
                requests = (left, check)
        elif mode == "level":  # tokens per minute
            left = check.limit - used.get(check.counter, 0.0)
            if tokens is None or left < tokens[0]:
                tokens = (left, check)
    headers: list[tuple[bytes, bytes]] = []
    for name, tightest in ((b"requests", requests), (b"tokens", tokens)):
        if tightest is not None:
            left, check = tightest
            headers += (
                (b"x-ratelimit-limit-" + name, b"%d" % check.limit),
                (b"x-ratelimit-remaining-" + name, b"%d" % max(left, 0)),
                (b"x-ratelimit-reset-" + name, b"%ds" % math.ceil(max(check.resets - now, 0))),
            )
    return headers
