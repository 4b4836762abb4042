"""Guards, as the alias file declares them (the types; ``_guards_section`` parses them).

A guard looks at what goes to a model (``input``), what comes back (``output``), or
both, and when it finds something it blocks the request, redacts what it found, or only
logs that it did. Aliases, keys and teams name the guards their requests pass through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Stage = Literal["input", "output", "both"]
STAGES: tuple[Stage, ...] = ("input", "output", "both")
GuardAction = Literal["block", "redact", "log"]
GUARD_ACTIONS: tuple[GuardAction, ...] = ("block", "redact", "log")
OnError = Literal["open", "closed"]
#: The detectors the gateway has built in (``runestone.guards.detectors``).
BUILTIN_DETECTORS = ("email", "phone", "card", "iban", "secret")


@dataclass(frozen=True, slots=True)
class WebhookCheck:
    """A service of one's own asked about each text: allow, deny, or replace it."""

    url: str
    timeout: float = 2.0
    on_error: OnError = "closed"


@dataclass(frozen=True, slots=True)
class ModerationCheck:
    """A moderation model (``/v1/moderations``) of a configured provider; a text it flags
    (in one of ``categories``, or in any when none are named) is found."""

    target: str  # provider:model
    categories: tuple[str, ...] = ()
    timeout: float = 5.0
    on_error: OnError = "closed"


@dataclass(frozen=True, slots=True)
class GuardSpec:
    name: str
    stage: Stage
    action: GuardAction
    #: Built-in detectors by name, and custom ones as (name, regular expression).
    detect: tuple[str, ...] = ()
    patterns: tuple[tuple[str, str], ...] = ()
    webhook: WebhookCheck | None = None
    moderation: ModerationCheck | None = None
    #: Characters of a streamed answer a webhook or moderation guard checks at a time.
    segment: int = 400
    line: int = 0

    def watches(self, stage: Literal["input", "output"]) -> bool:
        return self.stage == stage or self.stage == "both"
