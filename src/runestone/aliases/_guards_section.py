"""The alias file's ``guards:`` section, and the names aliases, keys and teams give."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import regex

from runestone.aliases._cache_section import duration_seconds
from runestone.aliases._guard_specs import (
    BUILTIN_DETECTORS,
    GUARD_ACTIONS,
    STAGES,
    GuardSpec,
    ModerationCheck,
    OnError,
    WebhookCheck,
)
from runestone.aliases._keys import AccessTable
from runestone.aliases._schema import Alias, Problem
from runestone.aliases._sections import unknown_keys
from runestone.aliases._yaml_nodes import Located

_GUARD_KEYS = frozenset(
    {"detect", "patterns", "webhook", "moderation", "stage", "action", "segment"}
)
_WEBHOOK_KEYS = frozenset({"url", "timeout", "on_error"})
_MODERATION_KEYS = frozenset({"target", "categories", "timeout", "on_error"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: The most characters a custom pattern may take (a guard runs it on every text).
MAX_PATTERN = 1000


def parse_guards(section: Located | None, problems: list[Problem]) -> dict[str, GuardSpec]:
    """``guards: {name: {detect|patterns|webhook|moderation, stage, action}}``."""
    if section is None or section.value is None:
        return {}
    if not isinstance(section.value, dict):
        problems.append(Problem(section.line, "'guards' must map guard names to their settings"))
        return {}
    guards = {}
    for name, entry in section.value.items():
        where = f"guard {name!r}"
        if not _NAME.match(name):
            problems.append(Problem(entry.line, f"{where}: names are letters, digits, '.-_'"))
        elif not isinstance(entry.value, dict):
            problems.append(
                Problem(entry.line, f"{where}: expected a map with detect, webhook or moderation")
            )
        else:
            guard = _guard(name, entry.value, entry.line, where, problems)
            if guard is not None:
                guards[name] = guard
    return guards


def _guard(
    name: str, value: dict[str, Located], line: int, where: str, problems: list[Problem]
) -> GuardSpec | None:
    before = len(problems)
    unknown_keys(value, _GUARD_KEYS, where, problems)
    stage = _choice(value.get("stage"), STAGES, "both", f"{where}: stage", problems)
    action = _choice(value.get("action"), GUARD_ACTIONS, "block", f"{where}: action", problems)
    detect = _detect(value.get("detect"), where, problems)
    patterns = _patterns(value.get("patterns"), where, problems)
    webhook = _webhook(value.get("webhook"), where, problems)
    moderation = _moderation(value.get("moderation"), where, problems)
    kinds = sum(bool(x) for x in (detect or patterns, webhook, moderation))
    if kinds != 1:
        problems.append(
            Problem(line, f"{where}: give exactly one of detect/patterns, webhook, moderation")
        )
    if (webhook or moderation) and action == "redact":
        problems.append(
            Problem(line, f"{where}: a webhook or moderation guard's action is block or log")
        )
    segment = value.get("segment")
    size = 400
    if segment is not None:
        if isinstance(segment.value, int) and 50 <= segment.value <= 100_000:
            size = segment.value
        else:
            problems.append(Problem(segment.line, f"{where}: segment is 50 to 100000 characters"))
    if len(problems) > before:
        return None
    return GuardSpec(
        name,
        stage,  # type: ignore[arg-type]
        action,  # type: ignore[arg-type]
        detect,
        patterns,
        webhook,
        moderation,
        size,
        line,
    )


def _choice(
    entry: Located | None,
    allowed: tuple[str, ...],
    default: str,
    what: str,
    problems: list[Problem],
) -> str:
    if entry is None:
        return default
    if entry.value not in allowed:
        problems.append(Problem(entry.line, f"{what} is one of {', '.join(allowed)}"))
        return default
    return str(entry.value)


def _detect(entry: Located | None, where: str, problems: list[Problem]) -> tuple[str, ...]:
    if entry is None:
        return ()
    items = entry.value if isinstance(entry.value, list) else None
    names = [item.value for item in items] if items is not None else None
    if not names or any(n not in BUILTIN_DETECTORS for n in names):
        problems.append(
            Problem(entry.line, f"{where}: detect is a list of {', '.join(BUILTIN_DETECTORS)}")
        )
        return ()
    return tuple(dict.fromkeys(names))


def _patterns(
    entry: Located | None, where: str, problems: list[Problem]
) -> tuple[tuple[str, str], ...]:
    if entry is None:
        return ()
    if not isinstance(entry.value, dict) or not entry.value:
        problems.append(Problem(entry.line, f"{where}: patterns maps names to regular expressions"))
        return ()
    found = []
    for name, pattern in entry.value.items():
        what = f"{where}: pattern {name!r}"
        if not _NAME.match(name) or name in BUILTIN_DETECTORS:
            problems.append(Problem(pattern.line, f"{what}: a new name of letters, digits, '.-_'"))
            continue
        text = pattern.value
        if not isinstance(text, str) or not 0 < len(text) <= MAX_PATTERN:
            problems.append(Problem(pattern.line, f"{what}: a regular expression, 1 to 1000 chars"))
            continue
        try:
            compiled = regex.compile(text)
        except regex.error as exc:
            problems.append(Problem(pattern.line, f"{what}: not a regular expression ({exc})"))
            continue
        if compiled.search("") is not None:
            # It would match everywhere, and hold a stream back without end.
            problems.append(Problem(pattern.line, f"{what}: matches the empty string"))
            continue
        found.append((name, text))
    return tuple(found)


def _on_error(entry: Located | None, where: str, problems: list[Problem]) -> OnError:
    value = _choice(entry, ("open", "closed"), "closed", f"{where}: on_error", problems)
    return "open" if value == "open" else "closed"


def _timeout(entry: Located | None, default: float, where: str, problems: list[Problem]) -> float:
    if entry is None:
        return default
    seconds = duration_seconds(entry.value)
    if seconds is None or not 0 < seconds <= 60:
        problems.append(Problem(entry.line, f"{where}: timeout is 0 to 60 seconds (2s, 500ms)"))
        return default
    return seconds


def _webhook(entry: Located | None, where: str, problems: list[Problem]) -> WebhookCheck | None:
    if entry is None:
        return None
    shape = f"{where}: webhook is {{url: http(s)://..., timeout: 2s, on_error: open|closed}}"
    value = entry.value
    if not isinstance(value, dict) or "url" not in value:
        problems.append(Problem(entry.line, shape))
        return None
    unknown_keys(value, _WEBHOOK_KEYS, f"{where} webhook", problems)
    url = value["url"].value
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        problems.append(Problem(value["url"].line, shape))
        return None
    return WebhookCheck(
        url,
        _timeout(value.get("timeout"), 2.0, f"{where} webhook", problems),
        _on_error(value.get("on_error"), f"{where} webhook", problems),
    )


def _moderation(
    entry: Located | None, where: str, problems: list[Problem]
) -> ModerationCheck | None:
    if entry is None:
        return None
    shape = f"{where}: moderation is {{target: provider:model, categories: [...]}}"
    value = entry.value
    if not isinstance(value, dict) or "target" not in value:
        problems.append(Problem(entry.line, shape))
        return None
    unknown_keys(value, _MODERATION_KEYS, f"{where} moderation", problems)
    target = value["target"].value
    if not isinstance(target, str) or ":" not in target.strip(":"):
        problems.append(Problem(value["target"].line, shape))
        return None
    categories: tuple[str, ...] = ()
    given = value.get("categories")
    if given is not None:
        items = given.value if isinstance(given.value, list) else None
        if not items or not all(isinstance(i.value, str) for i in items):
            problems.append(Problem(given.line, shape))
            return None
        categories = tuple(i.value for i in items)
    return ModerationCheck(
        target,
        categories,
        _timeout(value.get("timeout"), 5.0, f"{where} moderation", problems),
        _on_error(value.get("on_error"), f"{where} moderation", problems),
    )


def guard_names(entry: Located | None, where: str, problems: list[Problem]) -> tuple[str, ...]:
    """An alias's, key's or team's ``guards: [name, ...]`` (checked against the section
    once the whole file is read)."""
    if entry is None or entry.value is None:
        return ()
    items = entry.value if isinstance(entry.value, list) else None
    if items is None or not all(isinstance(i.value, str) for i in items):
        problems.append(Problem(entry.line, f"{where}: guards is a list of guard names"))
        return ()
    return tuple(dict.fromkeys(i.value for i in items))


def unknown_guards(
    guards: Mapping[str, GuardSpec], aliases: Iterable[Alias], access: AccessTable
) -> list[Problem]:
    """A guard an alias, key or team names but the file does not declare."""
    named: list[tuple[str, int, tuple[str, ...]]] = [
        (f"alias {a.name!r}", a.line, a.guards) for a in aliases
    ]
    named += [(f"key {k.id!r}", k.line, k.guards) for k in access.keys.values()]
    named += [(f"team {t.id!r}", t.line, t.guards) for t in access.teams.values()]
    known = ", ".join(sorted(guards)) or "none declared under 'guards'"
    return [
        Problem(line, f"{where}: unknown guard {name!r} (known: {known})")
        for where, line, names in named
        for name in names
        if name not in guards
    ]
