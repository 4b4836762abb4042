"""The alias table's types: targets, aliases, the immutable table, and file problems."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from runestone.aliases._guard_specs import GuardSpec
from runestone.aliases._keys import NO_ACCESS, AccessTable, CacheSpec, HostedTools
from runestone.aliases._policy import DEFAULT_POLICY, Policy
from runestone.pricing import Price
from runestone.providers import ProviderSpec


@dataclass(frozen=True, slots=True)
class Target:
    """One place a request can go: a provider and the model name it knows."""

    provider: str
    model: str
    weight: float = 1.0
    #: Accepts a final assistant message as the start of its answer (None: as its
    #: provider's row says).
    prefill: bool | None = None

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}"


@dataclass(frozen=True, slots=True)
class Alias:
    """A name clients use, standing for one or more targets tried in order."""

    name: str
    targets: tuple[Target, ...]
    line: int = 0
    policy: Policy = DEFAULT_POLICY
    #: Where a request goes when a target says its prompt is too long for it.
    #: Where a prompt too long for a target goes; None: the alias's other targets.
    context_fallback: tuple[Target, ...] | None = None
    #: What a target without a provider's hosted tools does with them (``KeySpec``'s).
    hosted_tools: HostedTools = "drop"
    #: The exact response cache for its requests (None: the key's, if it has one).
    cache: CacheSpec | None = None
    #: Prompt-cache breakpoints placed for a target of another format (Anthropic's).
    prompt_cache: bool = True
    #: The guards its requests pass through (names from the file's ``guards:``).
    guards: tuple[str, ...] = ()

    @property
    def every_target(self) -> tuple[Target, ...]:
        """Every target a request to it may reach: its own, then its context fallback."""
        return (*self.targets, *(self.context_fallback or ()))

    @property
    def is_pattern(self) -> bool:
        """A name with ``*`` matches many requested names (``claude-*``)."""
        return "*" in self.name

    def for_model(self, requested: str) -> Alias:
        """A pattern alias with ``{model}`` in its targets replaced by the requested name."""

        def filled(t: Target) -> Target:
            return Target(
                t.provider, t.model.replace(MODEL_PLACEHOLDER, requested), t.weight, t.prefill
            )

        return Alias(
            self.name,
            tuple(filled(t) for t in self.targets),
            self.line,
            self.policy,
            None
            if self.context_fallback is None
            else tuple(filled(t) for t in self.context_fallback),
            self.hosted_tools,
            self.cache,
            self.prompt_cache,
            self.guards,
        )


MODEL_PLACEHOLDER = "{model}"


def pattern_regex(name: str) -> re.Pattern[str]:
    """``*`` matches any run of characters; everything else, brackets included, is literal."""
    return re.compile(".*".join(re.escape(part) for part in name.split("*")), re.DOTALL)


@dataclass(frozen=True, slots=True)
class Problem:
    line: int
    message: str

    def format(self, source: str) -> str:
        return f"{source}:{self.line}: {self.message}" if self.line else f"{source}: {self.message}"


class AliasFileError(ValueError):
    """The alias file is invalid; ``problems`` lists every problem with its line."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(p.format(source) for p in problems))


@dataclass(frozen=True, slots=True)
class AliasTable:
    """An immutable, validated alias table. Replaced whole on reload, never mutated."""

    aliases: Mapping[str, Alias]
    version: str
    source: str
    providers: tuple[ProviderSpec, ...] = ()
    defaults: Policy = DEFAULT_POLICY
    prices: Mapping[str, Price] = field(default_factory=lambda: MappingProxyType({}))

    #: Pattern aliases in file order, each with its compiled name.
    patterns: tuple[tuple[re.Pattern[str], Alias], ...] = ()
    #: The file says a reload may drop most aliases (else such a reload is refused).
    allow_shrink: bool = False
    #: Client keys, teams and their limits (``keys:``, ``teams:``, ``access:``).
    access: AccessTable = NO_ACCESS
    #: The guards declared (``guards:``), by name.
    guards: Mapping[str, GuardSpec] = field(default_factory=lambda: MappingProxyType({}))

    def get(self, name: str) -> Alias | None:
        return self.aliases.get(name)

    def match(self, name: str) -> Alias | None:
        """The alias for a requested name: an exact name first, then the first pattern
        that matches (with ``{model}`` filled in). ``provider:model`` names never match a
        pattern: a colon means the client named its target itself."""
        alias = self.aliases.get(name)
        if alias is not None or not self.patterns or ":" in name:
            return alias
        for regex, pattern in self.patterns:
            if regex.fullmatch(name):
                return pattern.for_model(name)
        return None

    def __len__(self) -> int:
        return len(self.aliases) + len(self.patterns)


class SpecError(ValueError):
    """A ``provider:model`` string that cannot name a target."""


def parse_spec(spec: str) -> Target:
    """Split ``provider:model`` on the first colon; the model may hold ``/`` and ``:``.

    >>> parse_spec("openrouter:anthropic/claude-3-haiku:beta")
    Target(provider='openrouter', model='anthropic/claude-3-haiku:beta')
    """
    provider, colon, model = spec.partition(":")
    provider = provider.strip().lower()
    model = model.strip()
    if not colon:
        raise SpecError(f"{spec!r} is not of the form provider:model")
    if not provider:
        raise SpecError(f"{spec!r} has an empty provider part (expected provider:model)")
    if not model:
        raise SpecError(f"{spec!r} has an empty model part (expected provider:model)")
    return Target(provider, model)


def table_version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]
