"""Text that arrives in pieces, scanned as one: a stream's text through a detect guard.

A match can be split across pieces (``sk-abc`` in one event, ``def...`` in the next). A
``TextWindow`` releases a piece's text only up to where a match could still be forming:
a partial match at the end of what it has seen, or a match that reaches the end and could
grow, is held back until the next piece decides it. So only the start of a possible
match waits (a word, usually), not a fixed number of characters, and what is held is
bounded by ``limit``. A whole text is the same thing with ``final=True``.
"""

from __future__ import annotations

from typing import NamedTuple

from runestone.guards.detectors import Detectors

#: The most characters held back while a possible match is forming; a match longer than
#: this is decided from what has been seen.
MAX_HOLD = 1024
#: Characters kept from before the held text, for patterns that look behind.
_CONTEXT = 16


class Finding(NamedTuple):
    start: int
    end: int
    detector: str


def mask(name: str) -> str:
    """What a redacted finding is replaced with."""
    return f"[REDACTED:{name}]"


class TextWindow:
    """One channel of text (a message's content, a tool call's arguments) through one
    guard's detectors. ``redacts``: findings are masked in what is released; otherwise
    text is released as it is (``log`` and ``block`` only need to know)."""

    __slots__ = ("_before", "_detectors", "_held", "limit", "redacts")

    def __init__(self, detectors: Detectors, *, redacts: bool, limit: int = MAX_HOLD) -> None:
        self._detectors = detectors
        self.redacts = redacts
        self.limit = limit
        self._held = ""
        self._before = ""

    def push(self, text: str, *, final: bool = False) -> tuple[str, list[str]]:
        """The text that may go out now, and the detectors that found something in it."""
        buf = self._before + self._held + text
        base = len(self._before)
        size = len(buf)
        cut = size
        either = self._detectors.either
        if not final and either is not None:
            first = either.search(buf, base, partial=True)
            if first is None or first.partial:
                # Nothing here, or only where a match may be starting (before it, no
                # detector matches): release up to there.
                return self._release(buf, base, first.start() if first else size, text)
        elif final and not any(d.pattern.search(buf, base) for d in self._detectors):
            return self._release(buf, base, size, text)
        findings: list[Finding] = []
        for detector in self._detectors:
            for match in detector.pattern.finditer(buf, base, partial=not final):
                start, end = match.span()
                if not final and (
                    match.partial
                    or end == size
                    # A match that more text could still extend ("GB82 WEST 1234 "):
                    or detector.pattern.fullmatch(buf, start, size, partial=True) is not None
                ):
                    cut = min(cut, start)  # may still grow: decided by the next piece
                    break
                if detector.valid is None or detector.valid(match.group()):
                    findings.append(Finding(start, end, detector.name))
        findings.sort(key=_longest_first)
        cut = _before_straddling(findings, cut)
        if not final and size - cut > self.limit:
            cut = size - self.limit
            for start, end, _ in findings:  # a finding cut by the bound is decided whole
                if start < cut < end:
                    cut = end
        decided = _merged([f for f in findings if f.end <= cut])
        self._before = buf[max(base, cut - _CONTEXT) : cut] if cut > base else self._before
        self._held = buf[cut:]
        out = _masked(buf, base, cut, decided) if self.redacts else text
        return out, [f.detector for f in decided]

    def _release(self, buf: str, base: int, cut: int, text: str) -> tuple[str, list[str]]:
        """Release ``buf[base:cut]``, in which nothing was found; hold the rest."""
        size = len(buf)
        if size - cut > self.limit:
            cut = size - self.limit
        if cut > base:
            self._before = buf[max(base, cut - _CONTEXT) : cut]
        self._held = buf[cut:]
        return (buf[base:cut] if self.redacts else text), []

    def flush(self) -> tuple[str, list[str]]:
        """The end of the channel: decide and release what is held."""
        if not self._held:
            return "", []
        out, found = self.push("", final=True)
        return (out if self.redacts else ""), found


def _longest_first(finding: Finding) -> tuple[int, int]:
    """By start, and at one start the longest first: it names what is masked."""
    return finding.start, -finding.end


def _before_straddling(findings: list[Finding], cut: int) -> int:
    """Move ``cut`` back to the start of any finding it would split."""
    moved = True
    while moved:
        moved = False
        for start, end, _ in findings:
            if start < cut < end:
                cut = start
                moved = True
    return cut


def _merged(findings: list[Finding]) -> list[Finding]:
    """Overlapping findings as one span, named by the first (and longest) of them."""
    merged: list[Finding] = []
    for finding in findings:
        if merged and finding.start < merged[-1].end:
            last = merged[-1]
            if finding.end > last.end:
                merged[-1] = Finding(last.start, finding.end, last.detector)
        else:
            merged.append(finding)
    return merged


def _masked(buf: str, base: int, cut: int, findings: list[Finding]) -> str:
    parts = []
    at = base
    for start, end, name in findings:
        parts.append(buf[at:start])
        parts.append(mask(name))
        at = end
    parts.append(buf[at:cut])
    return "".join(parts)


def scan_whole(detectors: Detectors, text: str, *, redacts: bool) -> tuple[str, list[str]]:
    """A whole text: its redacted form (or itself) and the detectors that found something."""
    return TextWindow(detectors, redacts=redacts).push(text, final=True)
