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
    on_stream_cut: continue     # or error: a stream cut mid-answer is completed from the
                                # next target where that is safe

A key an alias leaves unset takes its default when the alias is routed (``completed``):
defaults that never hang, scaled by one number, the failover bound (30 s,
``RUNESTONE_FAILOVER_SECONDS``), and that depend on whether another target is left to
fail over to:

- while another target is left: ``first_token_timeout`` the failover bound, and a
  non-stream's ``attempt_timeout`` one and a half times it;
- on the last target (or the only one): ``first_token_timeout`` four times the bound,
  and no attempt bound but the deadline (``RUNESTONE_READ_TIMEOUT`` bounds silence);
- ``idle_timeout``: the bound with several targets (a rescue can take over), four times
  it with one;
- ``on_stream_cut``: ``continue`` with several targets, ``error`` with one.
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
#: A non-stream's answer, while another target is left: one and a half failover bounds.
ANSWER_FACTOR = 1.5
#: The last target's (and a single target's) bound: four failover bounds.
LONG_FACTOR = 4.0
#: The failover bound, unless ``RUNESTONE_FAILOVER_SECONDS`` says otherwise.
FAILOVER_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Policy:
    """Defaults apply to aliases that set nothing and to bare ``provider:model`` names."""

    strategy: Strategy = "fallback"
    retries: int = 2
    timeout: float = 600.0
    first_token_timeout: float | None = None
    idle_timeout: float | None = None
    attempt_timeout: float | None = None
    on_stream_cut: OnStreamCut | None = None  # unset: by the number of targets
    #: Set by ``completed``: the bounds of the last target to try.
    last_first_token_timeout: float | None = None
    last_attempt_timeout: float | None = None

    def completed(self, targets: int, failover: float) -> Policy:
        """This policy with every unset key at its default, for an alias of ``targets``
        targets (see the module docstring)."""
        several = targets > 1
        long = failover * LONG_FACTOR
        first, attempt = self.first_token_timeout, self.attempt_timeout
        return replace(
            self,
            first_token_timeout=first if first is not None else failover if several else long,
            last_first_token_timeout=first if first is not None else long,
            attempt_timeout=attempt
            if attempt is not None
            else failover * ANSWER_FACTOR
            if several
            else None,
            last_attempt_timeout=attempt,
            idle_timeout=self.idle_timeout or (failover if several else long),
            on_stream_cut=self.on_stream_cut or ("continue" if several else "error"),
        )

    def stream_attempt_timeout(self, *, last: bool = False) -> float | None:
        """What bounds a stream attempt until its first content: the tighter of the two
        (of the last target's bounds, with ``last``)."""
        if last:
            bounds = (self.last_attempt_timeout, self.last_first_token_timeout)
        else:
            bounds = (self.attempt_timeout, self.first_token_timeout)
        limits = [t for t in bounds if t is not None]
        return min(limits) if limits else None

    def describe(self) -> str:
        parts = [self.strategy, f"retries={self.retries}", f"timeout={self.timeout:g}s"]
        if self.attempt_timeout is not None:
            parts.append(f"attempt_timeout={self.attempt_timeout:g}s")
        if self.on_stream_cut is not None:
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
