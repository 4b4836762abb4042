"""Per-alias resilience policy: how targets are chosen, retried and timed.

Read from an alias's map (and from the file's ``defaults:``), validated like the rest of
the file. Keys are part of the user contract::

    strategy: fallback          # or weighted, or least_busy
    retries: 2                  # per target, retryable errors only
    timeout: 30                 # seconds, whole request, all attempts together
    attempt_timeout: 10         # seconds per attempt: a stream's first content, or a
                                # non-stream's whole answer; then the next try
    first_token_timeout: 5      # streams only: seconds until the first content
    idle_timeout: 10            # streams only: seconds of silence between chunks
    on_stream_cut: continue     # or error (the default): a stream cut mid-answer is
                                # completed from the next target where that is safe
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from runestone.aliases._yaml_nodes import Located

Strategy = Literal["fallback", "weighted", "least_busy"]
OnStreamCut = Literal["error", "continue"]
ON_STREAM_CUT: tuple[OnStreamCut, ...] = ("error", "continue")
STRATEGIES: tuple[Strategy, ...] = ("fallback", "weighted", "least_busy")
_SECONDS_KEYS = ("timeout", "attempt_timeout", "first_token_timeout", "idle_timeout")
POLICY_KEYS = frozenset({"strategy", "retries", "on_stream_cut", *_SECONDS_KEYS})
MAX_RETRIES = 10


@dataclass(frozen=True, slots=True)
class Policy:
    """Defaults apply to aliases that set nothing and to bare ``provider:model`` names."""

    strategy: Strategy = "fallback"
    retries: int = 2
    timeout: float = 600.0
    first_token_timeout: float | None = None
    idle_timeout: float | None = None
    attempt_timeout: float | None = None
    on_stream_cut: OnStreamCut = "error"

    def stream_attempt_timeout(self) -> float | None:
        """What bounds a stream attempt until its first content: the tighter of the two."""
        limits = [t for t in (self.attempt_timeout, self.first_token_timeout) if t is not None]
        return min(limits) if limits else None

    def describe(self) -> str:
        parts = [self.strategy, f"retries={self.retries}", f"timeout={self.timeout:g}s"]
        if self.attempt_timeout is not None:
            parts.append(f"attempt_timeout={self.attempt_timeout:g}s")
        if self.on_stream_cut != "error":
            parts.append(f"on_stream_cut={self.on_stream_cut}")
        if self.first_token_timeout is not None:
            parts.append(f"first_token_timeout={self.first_token_timeout:g}s")
        if self.idle_timeout is not None:
            parts.append(f"idle_timeout={self.idle_timeout:g}s")
        return " ".join(parts)


DEFAULT_POLICY = Policy()


def parse_policy(
    value: dict[str, Located], base: Policy, where: str, problems: list[tuple[int, str]]
) -> Policy:
    """``base`` with the policy keys found in ``value`` applied; problems are appended."""
    changes: dict[str, object] = {}
    strategy = value.get("strategy")
    if strategy is not None:
        if strategy.value not in STRATEGIES:
            problems.append(
                (
                    strategy.line,
                    f"{where}: strategy must be one of {', '.join(STRATEGIES)}, "
                    f"not {strategy.value!r}",
                )
            )
        else:
            changes["strategy"] = strategy.value
    cut = value.get("on_stream_cut")
    if cut is not None:
        if cut.value not in ON_STREAM_CUT:
            problems.append(
                (cut.line, f"{where}: on_stream_cut must be error or continue, not {cut.value!r}")
            )
        else:
            changes["on_stream_cut"] = cut.value
    retries = value.get("retries")
    if retries is not None:
        if (
            not isinstance(retries.value, int)
            or isinstance(retries.value, bool)
            or not 0 <= retries.value <= MAX_RETRIES
        ):
            problems.append(
                (retries.line, f"{where}: retries must be a whole number from 0 to {MAX_RETRIES}")
            )
        else:
            changes["retries"] = retries.value
    for key in _SECONDS_KEYS:
        entry = value.get(key)
        if entry is None:
            continue
        seconds = positive_number(entry.value)
        if seconds is None:
            problems.append((entry.line, f"{where}: {key} must be a positive number of seconds"))
        else:
            changes[key] = seconds
    return replace(base, **changes) if changes else base  # type: ignore[arg-type]


def positive_number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value)
