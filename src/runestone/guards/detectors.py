"""What a detect guard looks for: the built-in detectors and the file's own patterns.

Patterns are compiled with ``regex`` rather than ``re`` for one feature: a partial match
(``partial=True``) says where a match may be starting at the end of the text seen so far,
which is how a stream holds back only what could still become a match
(``runestone.guards.window``), for any pattern, the file's own included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import regex

from runestone.aliases import GuardSpec


@dataclass(frozen=True, slots=True)
class Detector:
    name: str
    pattern: regex.Pattern[str]
    #: A candidate is a finding only if this says so (a card's Luhn check, an IBAN's).
    valid: Callable[[str], bool] | None = None


def luhn_valid(candidate: str) -> bool:
    digits = [int(c) for c in candidate if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, digit in enumerate(reversed(digits)):
        if i % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    """ISO 13616: the country and check digits moved to the end, letters as numbers,
    the whole mod 97 is 1."""
    compact = candidate.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


_BUILTIN = {
    "email": (r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}", None),
    # A number written as a phone number: a country code, or groups with separators
    # (a bare run of digits is an amount or an id more often than a phone).
    "phone": (
        r"(?<![\w+])(?:\+\d{7,15}|(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?"
        r"\d{2,4}[ .-]\d{3,4}(?:[ .-]?\d{3,4})?)(?![\w])",
        None,
    ),
    "card": (r"(?<![\d])(?:\d[ -]?){12,18}\d(?![\d])", luhn_valid),
    "iban": (r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b", iban_valid),
    # The key formats of the providers (and of Runestone's own keys), AWS and GitHub
    # tokens, Slack tokens, and bearer tokens.
    "secret": (
        r"\b(?:sk|gsk|xai|pk|rk|rsk)[-_][A-Za-z0-9._-]{16,}"
        r"|\bAIza[A-Za-z0-9_-]{30,}"
        r"|\bAKIA[0-9A-Z]{16}\b"
        r"|\bgh[pousr]_[A-Za-z0-9]{30,}"
        r"|\bgithub_pat_[A-Za-z0-9_]{30,}"
        r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"
        r"|(?i:\bbearer\s+[A-Za-z0-9._~+/=-]{16,})",
        None,
    ),
}
BUILTIN: dict[str, Detector] = {
    name: Detector(name, regex.compile(pattern), valid)
    for name, (pattern, valid) in _BUILTIN.items()
}


class Detectors(tuple[Detector, ...]):
    """A guard's detectors, and one pattern that matches wherever any of them does.

    In a stream's text (``partial``), where a match may be forming at the end, a search
    of the combined pattern costs about half of one per detector; it says where the
    first possible start is, and a text in which it finds nothing, or only a start at
    the end, needs no detector run on its own. (In a whole text the detectors' own
    searches are cheaper: each skips to the literal it needs, such as an ``@``.)
    """

    either: regex.Pattern[str] | None

    def __new__(cls, detectors: tuple[Detector, ...]) -> Detectors:
        made = super().__new__(cls, detectors)
        made.either = _either(detectors)
        return made


def _either(detectors: tuple[Detector, ...]) -> regex.Pattern[str] | None:
    try:
        return regex.compile("|".join(f"(?:{d.pattern.pattern})" for d in detectors))
    except regex.error:  # a pattern with global flags cannot be embedded: no shortcut
        return None


def detectors_of(spec: GuardSpec) -> Detectors:
    """The detectors a guard runs: its built-ins, then its own patterns."""
    own = tuple(Detector(name, regex.compile(text)) for name, text in spec.patterns)
    return Detectors(tuple(BUILTIN[name] for name in spec.detect) + own)
